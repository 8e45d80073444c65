"""Authenticated push: a TAXII 2.1 inbox that writes each POST to the caller's ingest topic.

Endpoints (api root `bus` by default; one collection per publishing org, id = UUIDv5 of the org):

    GET  /taxii2/                                         discovery
    GET  /taxii2/{root}/                                  api root
    GET  /taxii2/{root}/collections/                      the caller's collection
    GET  /taxii2/{root}/collections/{id}/                 one collection
    POST /taxii2/{root}/collections/{id}/objects/         add objects -> 202 + status resource
    GET  /taxii2/{root}/status/{id}/                      status, from the bus receipt

Auth: a per-org API token (`Authorization: Bearer|Token <token>`, or HTTP basic with the token
as password, which is what taxii2-client's user/password sends).  Tokens are stored as scrypt
hashes in a YAML file; `stixbus connector token create ORG --tokens FILE` mints one.

Errors: wrong or missing token 401; another org's collection 403; unknown collection 404;
body over the limit 413; Content-Type not `application/taxii+json;version=2.1` 415; Accept
without TAXII 2.1 406; body not a JSON envelope/bundle 400.  The status of a POST is
`pending` until the worker's receipt (`stixbus.receipts.<org>`, matched by submission id = the
status id) arrives, then `complete` with a success or failure per object.  Statuses live in
this process's memory (TAXII lets servers expire them).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.base import (
    BROKER_DEFAULT_MAX_BYTES,
    CONNECTOR_NAMESPACE,
    ConnectorConfig,
    ConnectorConfigError,
    ConnectorError,
    now_utc,
    stix_time,
)
from schemas.envelope import Receipt
from schemas.org import Registry, load_registry
from schemas.yaml_file import read_yaml
from stixbus.errors import ConfigError
from stixbus.kafka.client import publish
from stixbus.kafka.config import client_kwargs
from stixbus.kafka.topics import TopicNames
from stixbus.settings import Settings

TAXII_MEDIA = "application/taxii+json;version=2.1"
STIX_MEDIA = "application/stix+json;version=2.1"
MAX_STATUSES = 100_000


class InboxConfig(ConnectorConfig):
    connector: Literal["inbox"] = "inbox"
    host: str = "127.0.0.1"
    port: int = Field(default=6443, ge=0, le=65535)
    api_root: str = Field(default="bus", pattern=r"^[a-z0-9-]{1,40}$")
    tokens_file: Path = Field(description="YAML of hashed tokens (stixbus connector token create)")
    max_body_bytes: int = Field(
        default=BROKER_DEFAULT_MAX_BYTES, ge=1024, description="Larger POSTs get 413"
    )
    public_url: str | None = Field(
        default=None, description="Base URL clients use (behind a proxy); default http://host:port"
    )


# -- tokens -------------------------------------------------------------------------------


class TokenRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[0-9a-f]{12}$")
    org: str
    label: str = ""
    created: str
    salt: str
    hash: str
    n: int = 2**14
    r: int = 8
    p: int = 1


class TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[TokenRecord] = Field(default_factory=list)


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=32)


def load_tokens(path: Path) -> TokenFile:
    if not path.exists():
        return TokenFile()
    try:
        data = read_yaml(path, "token file") or {}
    except ConfigError as exc:
        raise ConnectorConfigError(exc.what, exc.fix) from exc
    try:
        return TokenFile.model_validate(data)
    except ValidationError as exc:
        raise ConnectorConfigError(f"token file {path} is invalid: {exc}") from None


def create_token(path: Path, org: str, label: str = "") -> str:
    """Mint a token for `org`, store only its scrypt hash in `path`; return the token (once)."""
    tokens = load_tokens(path)
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    record = TokenRecord(
        id=token_id,
        org=org,
        label=label,
        created=stix_time(now_utc()),
        salt=salt.hex(),
        hash=_scrypt(secret, salt, 2**14, 8, 1).hex(),
    )
    tokens.tokens.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(tokens.model_dump(mode="json"), sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)
    return f"sbx_{token_id}_{secret}"


class TokenStore:
    """Verifies `sbx_<id>_<secret>` tokens against the hashed file; caches successes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._by_id: dict[str, TokenRecord] = {}
        self._verified: dict[str, str] = {}  # sha256(token) -> org

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = -1.0
        if mtime != self._mtime:
            self._by_id = {t.id: t for t in load_tokens(self.path).tokens}
            self._verified.clear()
            self._mtime = mtime

    def org_for(self, token: str) -> str | None:
        self._reload()
        fingerprint = hashlib.sha256(token.encode()).hexdigest()
        if fingerprint in self._verified:
            return self._verified[fingerprint]
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "sbx":
            return None
        record = self._by_id.get(parts[1])
        if record is None:
            return None
        digest = _scrypt(parts[2], bytes.fromhex(record.salt), record.n, record.r, record.p)
        if not hmac.compare_digest(digest.hex(), record.hash):
            return None
        self._verified[fingerprint] = record.org
        return record.org


def token_from_request(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value.strip()).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


# -- server -------------------------------------------------------------------------------


@dataclass
class StatusEntry:
    org: str
    request_timestamp: str
    versions: dict[str, str]  # object id -> version (modified/created, "" for SCOs)
    receipt: Receipt | None = None


def taxii_error(status: int, title: str, description: str) -> web.Response:
    body = {"title": title, "description": description, "http_status": str(status)}
    return web.Response(
        status=status, body=orjson.dumps(body), headers={"Content-Type": TAXII_MEDIA}
    )


TAXII_MEDIA_BASE = "application/taxii+json"


def taxii_json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), headers={"Content-Type": TAXII_MEDIA}
    )


def collection_id(org: str) -> str:
    return str(uuid.uuid5(CONNECTOR_NAMESPACE, f"inbox:{org}"))


def _media_ok(value: str) -> bool:
    """`application/taxii+json;version=2.1` (spaces and parameter case tolerated)."""
    parts = [p.strip().lower() for p in value.split(";")]
    return parts[0] == TAXII_MEDIA_BASE and "version=2.1" in parts[1:]


def _accept_ok(value: str) -> bool:
    if not value:
        return True
    for item in value.split(","):
        parts = [p.strip().lower() for p in item.split(";")]
        if parts[0] in ("*/*", "application/*"):
            return True
        if parts[0] == TAXII_MEDIA_BASE and (
            "version=2.1" in parts[1:] or not any(p.startswith("version=") for p in parts[1:])
        ):
            return True
    return False


@dataclass
class Inbox:
    config: InboxConfig
    settings: Settings
    registry: Registry = field(init=False)
    names: TopicNames = field(init=False)
    tokens: TokenStore = field(init=False)
    statuses: OrderedDict[str, StatusEntry] = field(default_factory=OrderedDict)
    _consumers: list[AIOKafkaConsumer] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.registry = load_registry(self.settings.registry_path)
        self.names = TopicNames(self.settings.topic_prefix)
        self.tokens = TokenStore(self.config.tokens_file)
        self.collections = {collection_id(o.id): o.id for o in self.registry.publishers}

    @property
    def base_url(self) -> str:
        return self.config.public_url or f"http://{self.config.host}:{self.config.port}"

    @property
    def max_body(self) -> int:
        return min(self.config.max_body_bytes, self.settings.limits.message_bytes)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body + 1)
        root = "/taxii2/{root}"
        app.router.add_get("/taxii2/", self.discovery)
        app.router.add_get(root + "/", self.api_root)
        app.router.add_get(root + "/collections/", self.list_collections)
        app.router.add_get(root + "/collections/{cid}/", self.get_collection)
        app.router.add_post(root + "/collections/{cid}/objects/", self.add_objects)
        app.router.add_get(root + "/status/{sid}/", self.get_status)
        app.router.add_get(root + "/status/{sid}", self.get_status)
        app.on_startup.append(self._start_receipts)
        app.on_cleanup.append(self._stop_receipts)
        return app

    # -- receipts --

    async def _start_receipts(self, app: web.Application) -> None:
        # One consumer per publisher, each acting as that org: under security an org may read
        # only its own receipts topic, and the inbox holds no broader principal.
        self._consumers = []
        for org in self.registry.publishers:
            consumer = AIOKafkaConsumer(
                **client_kwargs(self.settings, org.id),
                enable_auto_commit=False,
                auto_offset_reset="latest",
            )
            await consumer.start()
            self._consumers.append(consumer)
            topic = self.names.receipts(org.id)
            cluster = await consumer._client.fetch_all_metadata()
            tps = [
                TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or [])
            ]
            if not tps:
                await self._stop_receipts(app)
                raise ConnectorError(
                    f"no receipts topic {topic!r}: create the topics with `stixbus topics` "
                    "(or start the worker) before the inbox"
                )
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)  # resolve now: receipts after this point are seen
            self._tasks.append(asyncio.create_task(self._read_receipts(consumer)))

    async def _read_receipts(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for m in messages:
                    try:
                        receipt = Receipt.model_validate_json(m.value or b"")
                    except ValidationError:
                        continue
                    entry = self.statuses.get(receipt.submission_id)
                    if entry is not None and entry.org == receipt.publisher:
                        entry.receipt = receipt

    async def _stop_receipts(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        for consumer in self._consumers:
            await consumer.stop()
        self._consumers = []

    # -- helpers --

    def _auth(self, request: web.Request) -> str | web.Response:
        token = token_from_request(request)
        org = self.tokens.org_for(token) if token else None
        if org is None:
            return taxii_error(
                401,
                "Unauthorized",
                "missing or wrong API token: send 'Authorization: Bearer <token>' with a token "
                "from `stixbus connector token create`",
            )
        return org

    def _check_root(self, request: web.Request) -> web.Response | None:
        if request.match_info.get("root") != self.config.api_root:
            return taxii_error(
                404,
                "Not Found",
                f"no API root {request.match_info['root']!r}; "
                f"this server has /taxii2/{self.config.api_root}/",
            )
        if not _accept_ok(request.headers.get("Accept", "")):
            return taxii_error(406, "Not Acceptable", f"send 'Accept: {TAXII_MEDIA}'")
        return None

    def _collection_info(self, org: str) -> dict[str, Any]:
        return {
            "id": collection_id(org),
            "title": f"Ingest of {self.registry.get(org).name}",
            "description": f"Objects posted here are published as {org} on the bus",
            "can_read": False,
            "can_write": True,
            "media_types": [STIX_MEDIA],
        }

    def _authorise(
        self, request: web.Request, *, root: bool = True, collection: bool = False
    ) -> str | web.Response:
        """The org behind the request's token, or the TAXII error response to send instead."""
        auth = self._auth(request)
        if isinstance(auth, web.Response):
            return auth
        if root and (bad := self._check_root(request)) is not None:
            return bad
        if collection and (bad := self._own_collection(request, auth)) is not None:
            return bad
        return auth

    def _own_collection(self, request: web.Request, org: str) -> web.Response | None:
        cid = request.match_info["cid"]
        owner = self.collections.get(cid)
        if owner is None:
            return taxii_error(404, "Not Found", f"no collection {cid!r} in this API root")
        if owner != org:
            return taxii_error(
                403,
                "Forbidden",
                f"collection {cid} is {owner}'s ingest; your token is for {org}: "
                f"post to collection {collection_id(org)}",
            )
        return None

    # -- handlers --

    async def discovery(self, request: web.Request) -> web.Response:
        auth = self._auth(request)
        if isinstance(auth, web.Response):
            return auth
        root_url = f"{self.base_url}/taxii2/{self.config.api_root}/"
        return taxii_json(
            {
                "title": "stixbus TAXII 2.1 inbox",
                "description": "Push STIX 2.1 to the bus as your organisation",
                "default": root_url,
                "api_roots": [root_url],
            }
        )

    async def api_root(self, request: web.Request) -> web.Response:
        auth = self._authorise(request)
        if isinstance(auth, web.Response):
            return auth
        return taxii_json(
            {
                "title": "stixbus ingest",
                "versions": [TAXII_MEDIA],
                "max_content_length": self.max_body,
            }
        )

    async def list_collections(self, request: web.Request) -> web.Response:
        auth = self._authorise(request)
        if isinstance(auth, web.Response):
            return auth
        return taxii_json({"collections": [self._collection_info(auth)]})

    async def get_collection(self, request: web.Request) -> web.Response:
        auth = self._authorise(request, collection=True)
        if isinstance(auth, web.Response):
            return auth
        return taxii_json(self._collection_info(auth))

    async def add_objects(self, request: web.Request) -> web.Response:
        auth = self._authorise(request, collection=True)
        if isinstance(auth, web.Response):
            return auth
        if not _media_ok(request.headers.get("Content-Type", "")):
            return taxii_error(
                415,
                "Unsupported Media Type",
                f"Content-Type {request.headers.get('Content-Type', '')!r} is not "
                f"{TAXII_MEDIA!r}: send a TAXII 2.1 envelope with that type",
            )
        too_big = taxii_error(
            413,
            "Payload Too Large",
            f"the body is over {self.max_body} bytes: split it into several POSTs",
        )
        if request.content_length is not None and request.content_length > self.max_body:
            return too_big
        body = bytearray()
        async for chunk in request.content.iter_chunked(65536):
            body += chunk
            if len(body) > self.max_body:
                return too_big
        try:
            document = orjson.loads(bytes(body))
        except orjson.JSONDecodeError as exc:
            return taxii_error(400, "Bad Request", f"the body is not JSON ({exc})")
        objects = document.get("objects") if isinstance(document, dict) else None
        if not isinstance(objects, list):
            return taxii_error(
                400,
                "Bad Request",
                "the body must be a TAXII envelope or STIX bundle with an 'objects' list",
            )
        status_id = str(uuid.uuid4())
        bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}
        versions = {}
        for obj in objects:
            if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                versions[obj["id"]] = str(obj.get("modified") or obj.get("created") or "")
        entry = StatusEntry(auth, stix_time(now_utc()), versions)
        self.statuses[status_id] = entry
        while len(self.statuses) > MAX_STATUSES:
            self.statuses.popitem(last=False)
        await publish(
            client_kwargs(self.settings, auth),
            self.names.ingest(auth),
            orjson.dumps(bundle),
            status_id,
        )
        return taxii_json(self._status(status_id, entry, len(objects)), status=202)

    async def get_status(self, request: web.Request) -> web.Response:
        auth = self._authorise(request)
        if isinstance(auth, web.Response):
            return auth
        sid = request.match_info["sid"]
        entry = self.statuses.get(sid)
        if entry is None or entry.org != auth:
            return taxii_error(
                404,
                "Not Found",
                f"no status {sid!r} for {auth} (statuses live as long as the inbox process)",
            )
        return taxii_json(self._status(sid, entry, None))

    def _status(self, sid: str, entry: StatusEntry, total: int | None) -> dict[str, Any]:
        ids = list(entry.versions)
        total = len(ids) if total is None else total
        base = {"id": sid, "request_timestamp": entry.request_timestamp, "total_count": total}
        receipt = entry.receipt
        if receipt is None:
            return {
                **base,
                "status": "pending",
                "success_count": 0,
                "failure_count": 0,
                "pending_count": total,
            }
        accepted = set(receipt.accepted_ids)
        reasons: dict[str | None, str] = {}
        for rej in receipt.rejections:
            reasons.setdefault(rej.object_id, f"{rej.reason.value}: {rej.message}")
        successes = [{"id": i, "version": entry.versions[i]} for i in ids if i in accepted]
        failures = [
            {
                "id": i,
                "version": entry.versions[i],
                "message": reasons.get(i) or reasons.get(None) or "rejected by the bus",
            }
            for i in ids
            if i not in accepted
        ]
        failures += [
            {"id": "", "version": "", "message": "not a STIX object with an id"}
            for _ in range(total - len(ids))
        ]
        return {
            **base,
            "status": "complete",
            "success_count": len(successes),
            "failure_count": len(failures),
            "pending_count": 0,
            "successes": successes,
            "failures": failures,
        }


async def serve(config: InboxConfig, settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the inbox until `stop` is set (or forever)."""
    inbox = Inbox(config, settings)
    runner = web.AppRunner(inbox.app())
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    try:
        await (stop.wait() if stop else asyncio.Event().wait())
    finally:
        await runner.cleanup()
