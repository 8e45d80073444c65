"""Wiring of `stixbus sinks serve` and `stixbus export` (settings -> sinks, servers, readers)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from egress.credentials import CredentialStore, default_path
from egress.sinks import http as http_server
from egress.sinks.dns import ServedZone, ZoneServer, make_key, tsig_secret
from egress.sinks.service import Follower, build_sinks, run_follower
from egress.sinks.subscriber import Safety, SubscriberSink
from schemas.org import load_registry
from schemas.sinks import Format, SinksConfig, SubscriberSinks, load_sinks
from stixbus import metrics
from stixbus.errors import UserError
from stixbus.kafka.acls import EGRESS
from stixbus.kafka.config import client_kwargs
from stixbus.kafka.replay import follow_all
from stixbus.kafka.topics import TopicNames
from stixbus.settings import Settings

log = logging.getLogger("stixbus.sinks")



@dataclass(frozen=True)
class Bound:
    http_port: int
    dns_port: int


def sinks_config(settings: Settings) -> SinksConfig:
    return load_sinks(settings.sinks.config or settings.deploy_dir / "sinks.yaml")


def sinks_root(settings: Settings) -> Path:
    return settings.sinks.dir or settings.home / "sinks"


def subscriber_orgs_all(settings: Settings) -> list[str]:
    return [o.id for o in load_registry(settings.registry_path).subscribers]


def subscriber_orgs(settings: Settings) -> list[str]:
    """The subscribers to serve: STIXBUS_SINKS_ORGS, or every subscriber of the registry."""
    subscribers = subscriber_orgs_all(settings)
    wanted = [o.strip() for o in settings.sinks.orgs.split(",") if o.strip()]
    unknown = sorted(set(wanted) - set(subscribers))
    if unknown:
        raise UserError(
            f"STIXBUS_SINKS_ORGS names {', '.join(unknown)}, not subscribers in "
            f"{settings.registry_path}",
            "list subscriber org ids only, or leave it empty for all of them",
        )
    return wanted or subscribers


async def serve(settings: Settings, ready: Callable[[Bound], None] | None = None) -> None:
    """Run the sinks of every configured subscriber until cancelled."""
    orgs = subscriber_orgs(settings)
    config = sinks_config(settings)
    strangers = sorted({s.org for s in config.subscribers} - set(subscriber_orgs_all(settings)))
    if strangers:
        raise UserError(
            f"the sinks config names {', '.join(strangers)}, not subscribers in "
            f"{settings.registry_path}",
            "remove them from the sinks config (deploy/sinks.yaml) or make them subscribers",
        )
    metrics.init_orgs([], orgs)
    sink_settings = settings.sinks
    safety = Safety(sink_settings.max_change, sink_settings.min_entries, sink_settings.hold_seconds)
    loop = asyncio.get_running_loop()
    zone_server: ZoneServer | None = None
    notifications: set[asyncio.Task[None]] = set()

    def notify(subscriber: SubscriberSinks, serial: int) -> None:
        if zone_server is not None and subscriber.notify:
            task = loop.create_task(zone_server.notify(subscriber, serial))
            notifications.add(task)
            task.add_done_callback(notifications.discard)

    def on_new_serial(subscriber: SubscriberSinks, serial: int) -> None:
        loop.call_soon_threadsafe(notify, subscriber, serial)  # called from the render thread

    sinks = build_sinks(orgs, config, sinks_root(settings), safety, on_new_serial)
    zones = [
        ServedZone(
            sink.config,
            make_key(sink.config, tsig_secret(sink.config, settings.home)),
            sink.published_zone,
        )
        for sink in sinks.values()
        if Format.RPZ in sink.config.formats
    ]
    zone_server = ZoneServer(zones)
    dns_port = await zone_server.start(sink_settings.host, sink_settings.dns_port)
    credentials = CredentialStore(
        settings.taxii.credentials_file or default_path(settings.home), orgs=set(orgs)
    )
    tls = None
    use_tls = sink_settings.tls
    if use_tls is None:
        use_tls = sink_settings.tls_cert is not None and sink_settings.tls_key is not None
    if use_tls:
        if sink_settings.tls_cert is None or sink_settings.tls_key is None:
            raise UserError(
                "STIXBUS_SINKS_TLS is on but STIXBUS_SINKS_TLS_CERT or _TLS_KEY is unset",
                "give the PEM certificate and key of the lists server",
            )
        tls = http_server.ssl_context(sink_settings.tls_cert, sink_settings.tls_key)
    if tls is None and not _loopback(sink_settings.host):
        raise UserError(
            f"the lists server would serve TLP-marked lists in clear on {sink_settings.host}",
            "set STIXBUS_SINKS_TLS_CERT and STIXBUS_SINKS_TLS_KEY (HTTPS), or bind 127.0.0.1",
        )
    app = http_server.make_app(sinks_root(settings), set(orgs), credentials)
    runner, http_port = await http_server.start(
        app, sink_settings.host, sink_settings.http_port, tls
    )
    log.info(
        "sinks for %s: %s on %s:%d, zone transfers on %s:%d",
        ", ".join(orgs), "HTTPS" if tls else "HTTP", sink_settings.host, http_port,
        sink_settings.host, dns_port,
    )  # fmt: skip
    if ready is not None:
        ready(Bound(http_port, dns_port))
    names = TopicNames(settings.topic_prefix)
    conn = client_kwargs(settings, EGRESS)
    followers = [
        Follower(sink, names.deliver(org), asyncio.Event(), asyncio.Event())
        for org, sink in sinks.items()
    ]
    try:
        await asyncio.gather(
            *(
                run_follower(f, conn, sink_settings.debounce_seconds, settings.max_record_bytes)
                for f in followers
            )
        )
    finally:
        await zone_server.stop()
        await runner.cleanup()
        credentials.close()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def export(settings: Settings, org: str, fmt: Format, folder: Path) -> SubscriberSink:
    """Read `org`'s delivery topic from the beginning to its current end and write `fmt` into
    `folder/<org>/` once (no safety limit: there is nothing published to compare with)."""
    if org not in subscriber_orgs(settings):
        raise UserError(
            f"{org!r} is not a subscriber in {settings.registry_path}",
            "export the lists of a subscriber org (roles: [subscriber])",
        )
    subscriber = sinks_config(settings).for_org(org).model_copy(update={"formats": (fmt,)})
    sink = SubscriberSink(subscriber, folder, Safety(enabled=False))
    loaded = asyncio.Event()

    def apply(records: list[tuple[bytes | None, bytes | None]]) -> None:
        sink.apply_records(records)

    reader = asyncio.create_task(
        follow_all(
            client_kwargs(settings, EGRESS),
            TopicNames(settings.topic_prefix).deliver(org),
            apply,
            loaded,
            max_record_bytes=settings.max_record_bytes,
        )
    )
    waiter = asyncio.create_task(loaded.wait())
    try:
        await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done():
            reader.result()
    finally:
        reader.cancel()
        waiter.cancel()
    sink.publish(datetime.now(UTC))
    return sink
