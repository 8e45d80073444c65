"""The subscribers' TAXII 2.1 server (a thin shell over stixbus/core/taxii.py).

Endpoints (API root `feeds` by default; one read-only collection per subscribing org):

    GET /taxii2/                                               discovery
    GET /taxii2/{root}/                                        API root
    GET /taxii2/{root}/collections/                            the caller's collection
    GET /taxii2/{root}/collections/{id}/                       one collection
    GET /taxii2/{root}/collections/{id}/objects/               objects (envelope, paged)
    GET /taxii2/{root}/collections/{id}/manifest/              manifest (paged)
    GET /taxii2/{root}/collections/{id}/objects/{oid}/         one object's versions (envelope)
    GET /taxii2/{root}/collections/{id}/objects/{oid}/versions/  its version list

Data: one consumer, without a group, as the `stixbus-egress` principal, follows every
`<prefix>.deliver.<org>` topic from its start into a `CollectionIndex` per org.  Requests wait
(up to the request timeout, then 503) until the topics have been read to the end they had at
start, so a restarted server never serves a partial collection.

Auth (docs/taxii.md): HTTP Basic or a bearer token (egress/credentials.py), or a client
certificate signed by `STIXBUS_TAXII_CLIENT_CA` whose CN is the org id.  Missing or wrong
credentials 401; a collection that is not the caller's, whether it exists or not, 404 with the
same body; writes 403 on the caller's own collection.  Every response, errors included, is
`application/taxii+json;version=2.1`.  Bounds: page size, per-org request rate (429),
connection cap, header and idle timeouts, a deadline per request.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from egress.credentials import CredentialStore, RateLimited, default_path
from schemas.org import Registry, load_registry
from stixbus import http
from stixbus.core import taxii
from stixbus.core.ratelimit import AttemptLimiter
from stixbus.core.taxii import BadRequest, CollectionIndex, Filters, Position
from stixbus.http import listen, not_acceptable, retry_after, taxii_error, taxii_response
from stixbus.kafka.acls import EGRESS
from stixbus.kafka.config import client_kwargs, uses_sasl
from stixbus.kafka.topics import TopicNames
from stixbus.secret_files import taxii_next_key
from stixbus.settings import Settings, TaxiiServer

log = logging.getLogger("stixbus.taxii")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


NOT_FOUND = (404, "Not Found", "no such collection or object")


@dataclass
class Follower:
    """Reads the delivery topics into the indexes; knows how far each partition has been read."""

    conn: dict[str, Any]
    topics: dict[str, str]  # topic -> org
    indexes: dict[str, CollectionIndex]
    settle_ms: int
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    partitions: dict[str, list[TopicPartition]] = field(default_factory=dict)  # org -> tps
    caught_up_at: dict[TopicPartition, float] = field(default_factory=dict)  # wall ms
    consumer: AIOKafkaConsumer | None = None

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            **self.conn, enable_auto_commit=False, fetch_max_bytes=16 * 1024 * 1024
        )
        self.consumer = consumer
        await consumer.start()
        try:
            tps: list[TopicPartition] = []
            for topic, org in self.topics.items():
                numbers = consumer.partitions_for_topic(topic)
                if not numbers:
                    await consumer._client.force_metadata_update()
                    numbers = consumer.partitions_for_topic(topic)
                if not numbers:
                    raise RuntimeError(
                        f"no delivery topic {topic!r}: create the topics (`stixbus topics`) "
                        "before the TAXII server"
                    )
                if len(numbers) > 1:
                    log.warning(
                        "%s has %d partitions: date_added order is exact with one "
                        "(docs/taxii.md); recreate it to get that",
                        topic,
                        len(numbers),
                    )
                self.partitions[org] = [TopicPartition(topic, p) for p in sorted(numbers)]
                tps += self.partitions[org]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if ends[tp] > 0}
            if not pending:
                self._mark_caught_up(tps, ends)
                self.loaded.set()
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
                for tp, records in batch.items():
                    index = self.indexes[self.topics[tp.topic]]
                    for r in records:
                        index.add(tp.partition, r.offset, r.timestamp, r.value, r.key)
                now = time.time() * 1000
                for tp in tps:
                    high = consumer.highwater(tp)
                    position = await consumer.position(tp)
                    if high is not None and position >= high:
                        stamp = consumer.last_poll_timestamp(tp)
                        self.caught_up_at[tp] = float(stamp or now)
                    else:
                        self.caught_up_at.pop(tp, None)
                    if tp in pending and position >= ends[tp]:
                        pending.discard(tp)
                if not pending and not self.loaded.is_set():
                    for index in self.indexes.values():
                        index.compact()
                    self.loaded.set()
        finally:
            await consumer.stop()

    def _mark_caught_up(self, tps: list[TopicPartition], ends: dict[TopicPartition, int]) -> None:
        now = time.time() * 1000
        for tp in tps:
            self.caught_up_at[tp] = now

    def horizon(self, org: str) -> int:
        """Records of `org`'s collection before this time (µs) are final: each partition was
        read past it (a caught-up partition: up to its fetch time less the clock allowance)."""
        index = self.indexes[org]
        horizon: int | None = None
        for tp in self.partitions.get(org, []):
            last = index.last_us.get(tp.partition, 0)
            seen = self.caught_up_at.get(tp)
            h = max(last, (int(seen) - self.settle_ms) * 1000) if seen is not None else last
            horizon = h if horizon is None else min(horizon, h)
        return horizon or 0


class TaxiiApp:
    """Routes, auth and bounds; the data comes from `Follower`."""

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.config: TaxiiServer = settings.taxii
        self.registry = registry or load_registry(settings.registry_path)
        self.names = TopicNames(settings.topic_prefix)
        self.orgs = [o.id for o in self.registry.subscribers]
        self.collections = {taxii.collection_id(settings.topic_prefix, o): o for o in self.orgs}
        self.collection_of = {o: c for c, o in self.collections.items()}
        self.indexes = {o: CollectionIndex() for o in self.orgs}
        self.key = taxii_next_key(settings)
        path = self.config.credentials_file or default_path(settings.home)
        self.credentials = CredentialStore(
            path, AttemptLimiter(self.config.auth_attempts_per_minute), set(self.orgs)
        )
        self.rate = AttemptLimiter(self.config.requests_per_minute)
        conn = client_kwargs(settings, EGRESS)
        self.follower = Follower(
            conn,
            {self.names.deliver(o): o for o in self.orgs},
            self.indexes,
            int(self.config.settle_seconds * 1000),
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def tls(self) -> bool:
        if self.config.tls is not None:
            return self.config.tls
        return uses_sasl(self.settings) and self.settings.security_protocol == "SASL_SSL"

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return self.config.public_url or f"{scheme}://{self.config.host}:{self.config.port}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard])
        root = "/taxii2/{root}"
        col = root + "/collections/{cid}"
        app.router.add_get("/taxii2/", self.discovery)
        app.router.add_get(root + "/", self.api_root)
        app.router.add_get(root + "/collections/", self.list_collections)
        app.router.add_get(col + "/", self.get_collection)
        app.router.add_get(col + "/objects/", self.get_objects)
        app.router.add_get(col + "/manifest/", self.get_manifest)
        app.router.add_get(col + "/objects/{oid}/", self.get_object)
        app.router.add_get(col + "/objects/{oid}/versions/", self.get_versions)
        app.router.add_post(col + "/objects/", self.refuse_write)
        app.router.add_delete(col + "/objects/{oid}/", self.refuse_write)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        self._task = asyncio.create_task(self.follower.run())

    async def _stop(self, app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self.credentials.close()

    # -- middleware: auth, Accept, rate, deadline; TAXII errors for everything --

    async def _caller(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization")
        if header:
            return await self.credentials.authenticate(header)
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        if peer:
            for rdn in peer.get("subject", ()):
                for name, value in rdn:
                    if name == "commonName" and value in self.orgs:
                        return str(value)
        return None

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            async with asyncio.timeout(self.config.request_timeout_seconds):
                try:
                    org = await self._caller(request)
                except RateLimited as exc:
                    return taxii_error(
                        429,
                        "Too Many Requests",
                        "too many failed logins for this username or token: wait and retry",
                        retry_after(exc.retry_after),
                    )
                if org is None:
                    return taxii_error(
                        401,
                        "Unauthorized",
                        "send HTTP Basic or 'Authorization: Bearer <token>' with a credential "
                        "from `stixbus taxii credentials add`",
                        {"WWW-Authenticate": 'Basic realm="stixbus TAXII"'},
                    )
                if (refused := not_acceptable(request)) is not None:
                    return refused
                try:
                    self.rate.check(org)
                except RateLimited as exc:
                    return taxii_error(
                        429,
                        "Too Many Requests",
                        f"at most {self.config.requests_per_minute} requests per minute per "
                        "organisation: wait and retry",
                        retry_after(exc.retry_after),
                    )
                request["org"] = org
                try:
                    return await handler(request)
                except BadRequest as exc:
                    return taxii_error(400, "Bad Request", str(exc))
                except web.HTTPException as exc:
                    if exc.status == 404:
                        return taxii_error(*NOT_FOUND)
                    return taxii_error(exc.status, exc.reason, exc.reason)
        except TimeoutError:
            return taxii_error(
                503,
                "Service Unavailable",
                "the collections are still loading or the request took too long: retry",
                {"Retry-After": "5"},
            )

    # -- helpers --

    def _root(self, request: web.Request) -> None:
        if request.match_info.get("root") != self.config.api_root:
            raise web.HTTPNotFound()

    def _own(self, request: web.Request) -> str:
        """The caller's org if the path names its collection; 404 otherwise (the same answer
        for another org's collection and for none: nothing about others leaks)."""
        self._root(request)
        org: str = request["org"]
        if self.collections.get(request.match_info["cid"]) != org:
            raise web.HTTPNotFound()
        return org

    def _collection(self, org: str) -> dict[str, Any]:
        return {
            "id": self.collection_of[org],
            "title": f"Deliveries to {self.registry.get(org).name}",
            "description": "Everything the bus delivers to your organisation: indicators and "
            "their revocations, as new versions",
            "can_read": True,
            "can_write": False,
            "media_types": [taxii.STIX_MEDIA],
        }

    async def _loaded(self) -> None:
        await self.follower.loaded.wait()

    def _paging(
        self, request: web.Request, org: str, versions_default: str = "last"
    ) -> tuple[Filters, int, Position | None]:
        query = dict(request.query)
        limit = taxii.parse_limit(
            query.get("limit"), self.config.page_default, self.config.page_max
        )
        token = query.get("next")
        filters = taxii.parse_filters(query, versions_default=versions_default)
        if not token:
            return filters, limit, None
        after, carried = taxii.verify_next(self.key, token, self.collection_of[org])
        given = any(k == "added_after" or k.startswith("match[") for k in query)
        if given and filters != carried:
            raise BadRequest(
                "next was issued for other filters: send the same added_after and match[...] "
                "as the first page, or none"
            )
        return carried, limit, after

    async def _page(
        self, request: web.Request, build: Callable[[taxii.Page, str | None], bytes], **kw: Any
    ) -> web.Response:
        org = self._own(request)
        await self._loaded()
        object_id = request.match_info.get("oid")
        filters, limit, after = self._paging(request, org, kw.get("versions_default", "last"))
        index = self.indexes[org]
        if object_id is not None and object_id not in index.objects:
            raise web.HTTPNotFound()
        page = index.page(filters, limit, self.follower.horizon(org), after, object_id)
        token = None
        if page.more and page.entries:
            token = taxii.sign_next(
                self.key, self.collection_of[org], page.entries[-1].pos, filters
            )
        first, last = page.header_times(filters, after)
        return taxii_response(
            build(page, token),
            headers={"X-TAXII-Date-Added-First": first, "X-TAXII-Date-Added-Last": last},
        )

    # -- handlers --

    async def discovery(self, request: web.Request) -> web.Response:
        root = f"{self.base_url}/taxii2/{self.config.api_root}/"
        body = {
            "title": "stixbus TAXII 2.1",
            "description": "Your organisation's deliveries from the bus",
            "default": root,
            "api_roots": [root],
        }
        return taxii_response(orjson.dumps(body))

    async def api_root(self, request: web.Request) -> web.Response:
        self._root(request)
        body = {
            "title": "stixbus feeds",
            "versions": [taxii.TAXII_MEDIA],
            "max_content_length": 0,
        }
        return taxii_response(orjson.dumps(body))

    async def list_collections(self, request: web.Request) -> web.Response:
        self._root(request)
        return taxii_response(orjson.dumps({"collections": [self._collection(request["org"])]}))

    async def get_collection(self, request: web.Request) -> web.Response:
        return taxii_response(orjson.dumps(self._collection(self._own(request))))

    async def get_objects(self, request: web.Request) -> web.Response:
        return await self._page(request, taxii.envelope_body)

    async def get_manifest(self, request: web.Request) -> web.Response:
        return await self._page(request, taxii.manifest_body)

    async def get_object(self, request: web.Request) -> web.Response:
        return await self._page(request, taxii.envelope_body)

    async def get_versions(self, request: web.Request) -> web.Response:
        return await self._page(request, taxii.versions_body, versions_default="all")

    async def refuse_write(self, request: web.Request) -> web.Response:
        self._own(request)
        return taxii_error(403, "Forbidden", "this collection is read-only (can_write is false)")


def tls_context(app: TaxiiApp) -> ssl.SSLContext | None:
    if not app.tls:
        return None
    config = app.config
    return http.tls_context(
        app.settings.home, config.host, "taxii", config.tls_cert, config.tls_key, config.client_ca
    )


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the TAXII server until `stop` is set (or forever)."""
    app = TaxiiApp(settings)
    context = tls_context(app)
    runner = web.AppRunner(
        app.app(), keepalive_timeout=app.config.idle_timeout_seconds, access_log=None
    )
    await runner.setup()
    listener = await listen(runner, app.config.host, app.config.port, app.config, context)
    log.warning("stixbus TAXII server on %s (API root %s)", app.base_url, app.config.api_root)
    try:
        waiter = asyncio.ensure_future(stop.wait() if stop else asyncio.Event().wait())
        assert app._task is not None
        done, _ = await asyncio.wait({waiter, app._task}, return_when=asyncio.FIRST_COMPLETED)
        if app._task in done and app._task.exception() is not None:
            raise app._task.exception()  # type: ignore[misc]
    finally:
        listener.close()
        await runner.cleanup()
