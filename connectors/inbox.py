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

Errors: wrong or missing token 401; a collection that is not the caller's (another org's or
none at all: the same answer, naming nobody) 404; too many token attempts 429 (per token id);
body over the limit 413; body not sent within `body_timeout_seconds` 408; Content-Type not
`application/taxii+json;version=2.1` 415; Accept without TAXII 2.1 406; body not a JSON
envelope/bundle 400.  The status of a POST is
`pending` until the worker's receipt (`stixbus.receipts.<org>`, matched by submission id = the
status id) arrives, then `complete` with a success or failure per object.  Statuses live in
this process's memory, bounded in bytes and age (TAXII lets servers expire them).

Hardening (issue #12 finding 9): the inbox keeps the Kafka passwords of the orgs it serves
only (read once at start, never the admin's, worker's or operator's); TLS with the local CA by
default; idle/header/body timeouts and a connection cap; scrypt in a thread pool, a per-token-id
rate limit, and the same scrypt work for an unknown token id as for a known one.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import Field, SecretStr, ValidationError

from connectors.base import (
    BROKER_DEFAULT_MAX_BYTES,
    CONNECTOR_NAMESPACE,
    ConnectorConfig,
    ConnectorError,
    now_utc,
)
from connectors.inbox_auth import (
    AttemptLimiter,
    RateLimited,
    TokenStore,
    token_from_request,
)
from connectors.inbox_status import StatusEntry, StatusStore
from schemas.envelope import Receipt
from schemas.org import Registry, load_registry
from stixbus import http
from stixbus.core.ids import stix_time, uuid5
from stixbus.core.taxii import TAXII_MEDIA, TAXII_MEDIA_BASE
from stixbus.http import listen, not_acceptable, retry_after, taxii_error, taxii_response
from stixbus.kafka.client import publish
from stixbus.kafka.config import client_kwargs, read_credentials, uses_sasl
from stixbus.kafka.topics import TopicNames
from stixbus.settings import ConnectionBounds, Settings

STIX_MEDIA = "application/stix+json;version=2.1"


class InboxConfig(ConnectorConfig, ConnectionBounds):
    connector: Literal["inbox"] = "inbox"
    host: str = "127.0.0.1"
    port: int = Field(default=6443, ge=0, le=65535)
    api_root: str = Field(default="bus", pattern=r"^[a-z0-9-]{1,40}$")
    tokens_file: Path = Field(description="YAML of hashed tokens (stixbus connector token create)")
    max_body_bytes: int = Field(
        default=BROKER_DEFAULT_MAX_BYTES, ge=1024, description="Larger POSTs get 413"
    )
    public_url: str | None = Field(
        default=None,
        description="Base URL clients use (behind a proxy); default https://host:port",
    )
    orgs: list[str] | None = Field(
        default=None,
        description="Orgs this inbox serves (their Kafka passwords are the only ones it loads); "
        "default: every publisher in the registry",
    )
    tls: bool = Field(default=True, description="Serve HTTPS (false: plain HTTP, demos only)")
    tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate; default <STIXBUS_HOME>/secrets/inbox.pem, made and signed "
        "by the local CA (secrets/ca.pem) at first start",
    )
    tls_key: Path | None = Field(
        default=None, description="PEM key; default <STIXBUS_HOME>/secrets/inbox.key"
    )
    body_timeout_seconds: float = Field(
        default=60, gt=0, description="408 when a POST body takes longer to arrive"
    )
    auth_attempts_per_minute: int = Field(
        default=10, ge=1, description="Token checks per token id per minute; more get 429"
    )
    status_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=4096, description="Memory for status resources (oldest go)"
    )
    status_max_age_seconds: float = Field(
        default=24 * 3600, gt=0, description="A status resource is forgotten after this long"
    )


# -- server -------------------------------------------------------------------------------


def taxii_json(data: Any, status: int = 200) -> web.Response:
    return taxii_response(orjson.dumps(data), status)


def collection_id(org: str) -> str:
    return uuid5(CONNECTOR_NAMESPACE, f"inbox:{org}")


def _media_ok(value: str) -> bool:
    """`application/taxii+json;version=2.1` (spaces and parameter case tolerated)."""
    parts = [p.strip().lower() for p in value.split(";")]
    return parts[0] == TAXII_MEDIA_BASE and "version=2.1" in parts[1:]


@dataclass
class Inbox:
    config: InboxConfig
    settings: Settings
    registry: Registry = field(init=False)
    names: TopicNames = field(init=False)
    tokens: TokenStore = field(init=False)
    statuses: StatusStore = field(init=False)
    served: list[str] = field(init=False)
    credentials: dict[str, SecretStr] = field(init=False)  # org -> its Kafka password only
    _consumers: list[AIOKafkaConsumer] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.registry = load_registry(self.settings.registry_path)
        self.names = TopicNames(self.settings.topic_prefix)
        publishers = [o.id for o in self.registry.publishers]
        self.served = list(self.config.orgs) if self.config.orgs is not None else publishers
        unknown = [o for o in self.served if o not in publishers]
        if unknown:
            raise ConnectorError(
                f"inbox orgs {unknown} are not publishers in {self.settings.registry_path}: "
                "list only publishing orgs under `orgs`"
            )
        self.credentials = self._load_credentials()
        self.tokens = TokenStore(
            self.config.tokens_file, AttemptLimiter(self.config.auth_attempts_per_minute)
        )
        self.statuses = StatusStore(
            self.config.status_max_bytes, self.config.status_max_age_seconds
        )
        self.collections = {collection_id(o): o for o in self.served}

    def _load_credentials(self) -> dict[str, SecretStr]:
        """The served orgs' Kafka passwords, read once; every other principal's is dropped."""
        if not uses_sasl(self.settings):
            return {}
        if self.settings.sasl_username:
            if self.served != [self.settings.sasl_username] or self.settings.sasl_password is None:
                raise ConnectorError(
                    f"STIXBUS_SASL_USERNAME={self.settings.sasl_username!r} is one org: set "
                    f"`orgs: [{self.settings.sasl_username}]` in the inbox config and "
                    "STIXBUS_SASL_PASSWORD, or unset both to use the credentials file"
                )
            return {self.settings.sasl_username: self.settings.sasl_password}
        if self.settings.credentials_file is None:
            raise ConnectorError(
                "the inbox needs the Kafka passwords of the orgs it serves: set "
                "STIXBUS_CREDENTIALS_FILE (a file with only those orgs is enough)"
            )
        users = read_credentials(self.settings.credentials_file)
        missing = [o for o in self.served if o not in users]
        if missing:
            raise ConnectorError(
                f"no Kafka password for {missing} in {self.settings.credentials_file}: run "
                "`stixbus security apply`, or narrow `orgs` in the inbox config"
            )
        kept = {o: SecretStr(users[o]) for o in self.served}
        users.clear()
        return kept

    def kafka(self, org: str) -> dict[str, Any]:
        """aiokafka connection options acting as `org`, from its password held in memory."""
        if not uses_sasl(self.settings):
            return client_kwargs(self.settings, org)
        as_org = self.settings.model_copy(
            update={
                "sasl_username": org,
                "sasl_password": self.credentials[org],
                "credentials_file": None,
            }
        )
        return client_kwargs(as_org, org)

    @property
    def base_url(self) -> str:
        scheme = "https" if self.config.tls else "http"
        return self.config.public_url or f"{scheme}://{self.config.host}:{self.config.port}"

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
        for org_id in self.served:
            consumer = AIOKafkaConsumer(
                **self.kafka(org_id),
                enable_auto_commit=False,
                auto_offset_reset="latest",
            )
            await consumer.start()
            self._consumers.append(consumer)
            topic = self.names.receipts(org_id)
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
                    self.statuses.attach(receipt, len(m.value or b""))

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

    async def _auth(self, request: web.Request) -> str | web.Response:
        token = token_from_request(request)
        try:
            org = await self.tokens.verify(token) if token else None
        except RateLimited as exc:
            return taxii_error(
                429,
                "Too Many Requests",
                f"too many token attempts: at most {self.config.auth_attempts_per_minute} per "
                "minute per token id; wait and retry",
                retry_after(exc.retry_after),
            )
        if org is not None and org not in self.served:
            org = None  # a token for an org this inbox does not serve: no different answer
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
        return not_acceptable(request)

    def _collection_info(self, org: str) -> dict[str, Any]:
        return {
            "id": collection_id(org),
            "title": f"Ingest of {self.registry.get(org).name}",
            "description": f"Objects posted here are published as {org} on the bus",
            "can_read": False,
            "can_write": True,
            "media_types": [STIX_MEDIA],
        }

    async def _authorise(
        self, request: web.Request, *, root: bool = True, collection: bool = False
    ) -> str | web.Response:
        """The org behind the request's token, or the TAXII error response to send instead."""
        auth = await self._auth(request)
        if isinstance(auth, web.Response):
            return auth
        if root and (bad := self._check_root(request)) is not None:
            return bad
        if collection and (bad := self._own_collection(request, auth)) is not None:
            return bad
        return auth

    def _own_collection(self, request: web.Request, org: str) -> web.Response | None:
        # Another org's collection and one that does not exist get the same answer, which
        # names only the caller's own collection (never the owner of a guessed id).
        if self.collections.get(request.match_info["cid"]) != org:
            return taxii_error(
                404,
                "Not Found",
                f"no such collection for your token: yours is {collection_id(org)} "
                f"(GET /taxii2/{self.config.api_root}/collections/)",
            )
        return None

    # -- handlers --

    async def discovery(self, request: web.Request) -> web.Response:
        auth = await self._auth(request)
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
        auth = await self._authorise(request)
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
        auth = await self._authorise(request)
        if isinstance(auth, web.Response):
            return auth
        return taxii_json({"collections": [self._collection_info(auth)]})

    async def get_collection(self, request: web.Request) -> web.Response:
        auth = await self._authorise(request, collection=True)
        if isinstance(auth, web.Response):
            return auth
        return taxii_json(self._collection_info(auth))

    async def add_objects(self, request: web.Request) -> web.Response:
        auth = await self._authorise(request, collection=True)
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
        try:
            async with asyncio.timeout(self.config.body_timeout_seconds):
                async for chunk in request.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > self.max_body:
                        return too_big
        except TimeoutError:
            return taxii_error(
                408,
                "Request Timeout",
                f"the body did not arrive within {self.config.body_timeout_seconds:g}s: "
                "send it faster or in smaller POSTs",
            )
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
        self.statuses.add(status_id, entry)
        await publish(
            self.kafka(auth),
            self.names.ingest(auth),
            orjson.dumps(bundle),
            status_id,
            max_record_bytes=self.settings.max_record_bytes,
        )
        return taxii_json(self._status(status_id, entry, len(objects)), status=202)

    async def get_status(self, request: web.Request) -> web.Response:
        auth = await self._authorise(request)
        if isinstance(auth, web.Response):
            return auth
        sid = request.match_info["sid"]
        entry = self.statuses.get(sid)
        if entry is None or entry.org != auth:
            return taxii_error(
                404,
                "Not Found",
                f"no status {sid!r} for {auth} (statuses are kept "
                f"{self.config.status_max_age_seconds:g}s at most, in this inbox process)",
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


async def run(inbox: Inbox, stop: asyncio.Event | None = None) -> None:
    """Serve `inbox` until `stop` is set (or forever)."""
    config = inbox.config
    context = None
    if config.tls:
        try:
            context = http.tls_context(
                inbox.settings.home, config.host, "inbox", config.tls_cert, config.tls_key
            )
        except http.ServeError as exc:
            raise ConnectorError(exc.what) from exc
    runner = web.AppRunner(inbox.app(), keepalive_timeout=config.idle_timeout_seconds)
    await runner.setup()
    listener = await listen(runner, config.host, config.port, config, context)
    try:
        await (stop.wait() if stop else asyncio.Event().wait())
    finally:
        listener.close()
        await runner.cleanup()
        inbox.tokens.close()


async def serve(config: InboxConfig, settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the inbox until `stop` is set (or forever)."""
    await run(Inbox(config, settings), stop)
