"""`stixbus up|down|worker|topics|settings`: the local stack (broker, topics, worker, demo)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from schemas.org import load_registry
from stixbus import supervisor
from stixbus.cli import agreements as agreements_commands
from stixbus.errors import StixbusError
from stixbus.kafka.acls import ADMIN, WORKER
from stixbus.kafka.admin import ensure_topics, list_topics
from stixbus.kafka.client import publish, read_topic, run_on_broker
from stixbus.kafka.config import client_kwargs, uses_sasl
from stixbus.kafka.topics import TopicNames, TopicSpec
from stixbus.settings import Settings, get_settings

out = Console()
err = Console(stderr=True)

DEMO_PUBLISHERS = ("cert", "bank-a", "isp-one")


class StackError(StixbusError):
    """The local broker or worker did not start or stop."""


def register(cli: typer.Typer) -> None:
    """Add this module's commands to the `stixbus` app."""
    for command in (up, down, worker, topics, settings):
        cli.command()(command)


def _names(settings: Settings) -> TopicNames:
    return TopicNames(settings.topic_prefix)


def _kafka(action: str, settings: Settings) -> None:
    env = os.environ.copy()
    env.setdefault("STIXBUS_HOME", str(settings.home))
    env.setdefault("KAFKA_PORT", settings.bootstrap_servers.rsplit(":", 1)[-1])
    result = subprocess.run(
        ["bash", str(settings.deploy_dir / "kafka" / "kafka.sh"), action], env=env
    )
    if result.returncode != 0:
        raise StackError(
            f"kafka {action} failed",
            f"see the lines above and the logs in {settings.home}/kafka/logs",
        )


def _topic_specs(settings: Settings) -> list[TopicSpec]:
    registry = load_registry(settings.registry_path)
    return _names(settings).all_specs(
        registry,
        settings.partitions,
        settings.max_record_bytes,
        ingest_message_bytes=settings.limits.message_bytes,
        app_id=settings.app_id,
    )


def _create_topics(settings: Settings) -> list[str]:
    """Create every missing topic as admin (the worker may not: docs/security.md)."""
    conn = client_kwargs(settings, ADMIN)
    specs = _topic_specs(settings)
    return run_on_broker(
        ensure_topics(conn, specs, settings.replication_factor, settings.insync_replicas)
    )


def _check_topics(settings: Settings) -> None:
    """The worker's topics must exist before it starts: it has no right to create them."""
    present = set(run_on_broker(list_topics(client_kwargs(settings, WORKER))))
    missing = sorted(s.name for s in _topic_specs(settings) if s.name not in present)
    if missing:
        raise StackError(
            f"topics missing on {settings.bootstrap_servers}: {', '.join(missing)}",
            "the worker creates none (least privilege): run `stixbus topics` (as admin) or "
            "`stixbus up` first",
        )


def up(
    demo: Annotated[bool, typer.Option(help="Publish the demo bundles and show deliveries")] = True,
) -> None:
    """Start local Kafka, create topics, start a worker, publish demo bundles, show deliveries."""
    settings = get_settings()
    started = time.monotonic()
    _kafka("up", settings)
    get_settings.cache_clear()  # kafka.sh (re)wrote <home>/secrets/client.env
    settings = get_settings()
    if uses_sasl(settings):
        from stixbus.kafka.acl_admin import apply as apply_security

        applied = apply_security(settings, load_registry(settings.registry_path))
        out.print(
            f"security: {settings.security_protocol}; users created {len(applied.users.upsert)}, "
            f"ACLs created {len(applied.acls.create)}, removed {len(applied.acls.delete)}, "
            f"quotas set {len(applied.quotas.set)} (stixbus security show)"
        )
    created = _create_topics(settings)
    out.print(f"topics: {len(created)} created under prefix '{settings.topic_prefix}'")
    written, _ = agreements_commands.apply_file(settings, settings.agreements_path, prune=False)
    out.print(f"agreements: {settings.agreements_path} applied ({len(written)} changed)")
    pid = supervisor.start_worker(settings)
    out.print(f"worker: pid {pid}, log {supervisor.log_file(settings)}")
    if not supervisor.wait_ready(settings):
        err.print(supervisor.log_tail(settings))
        raise StackError(
            "the worker did not become ready", f"see its log: {supervisor.log_file(settings)}"
        )
    out.print(
        f"worker ready on http://127.0.0.1:{settings.web_port} "
        f"({time.monotonic() - started:.1f}s since `up` started)"
    )
    taxii_pid = supervisor.start_service(settings, "taxii", ["taxii", "serve"])
    scheme = "https" if settings.security_protocol == "SASL_SSL" else "http"
    out.print(
        f"taxii: pid {taxii_pid} on {scheme}://{settings.taxii.host}:{settings.taxii.port}"
        f"/taxii2/ (credentials: stixbus taxii credentials add ORG; docs/taxii.md)"
    )
    sinks = supervisor.start_service(settings, "sinks", ["sinks", "serve"])
    out.print(
        f"sinks: pid {sinks}, lists on port {settings.sinks.http_port}, RPZ transfers on "
        f"{settings.sinks.dns_port}, log {settings.logs_dir / 'sinks.log'} (docs/sinks.md)"
    )
    if demo:
        _demo(settings)
    out.print(
        "\nThe bus is running. Try: stixbus consume --as bank-b --from-beginning | "
        "stixbus publish --as cert FILE | stixbus down"
    )


def _demo(settings: Settings) -> None:
    names = _names(settings)
    registry = load_registry(settings.registry_path)
    sent_at = time.monotonic()
    for org in DEMO_PUBLISHERS:
        payload = (settings.deploy_dir / "demo" / f"{org}.json").read_bytes()
        sent = run_on_broker(
            publish(
                client_kwargs(settings, org),
                names.ingest(org),
                payload,
                max_record_bytes=settings.max_record_bytes,
            )
        )
        out.print(f"published deploy/demo/{org}.json as {org} (submission {sent.submission_id})")
    topics = [names.deliver(s.id) for s in registry.subscribers]
    received: dict[str, dict[str, dict[str, object]]] = {}
    while time.monotonic() - sent_at < 20:
        time.sleep(1.0)
        received = run_on_broker(_collect_all(settings, topics))
        banks = [names.deliver(o.id) for o in registry.subscribers if o.sector == "bank"]
        if all(received.get(t) for t in banks):
            break
    waited = time.monotonic() - sent_at
    table = Table(title=f"Indicators each subscriber holds ({waited:.1f}s after publishing)")
    table.add_column("subscriber")
    table.add_column("indicators", justify="right")
    table.add_column("pattern · TLP · sources")
    for subscriber, topic in zip(registry.subscribers, topics, strict=True):
        indicators = [o for o in received.get(topic, {}).values() if o.get("type") == "indicator"]
        lines = [_describe(o) for o in indicators]
        table.add_row(subscriber.id, str(len(indicators)), "\n".join(lines) or "—")
    out.print(table)


def _describe(indicator: dict[str, object]) -> str:
    from schemas.tlp import tlp_of_marking

    refs = indicator.get("object_marking_refs")
    marks = [tlp_of_marking(str(m)) for m in refs] if isinstance(refs, list) else []
    tlps = "/".join(t.label for t in marks if t is not None) or "?"
    sources = indicator.get("x_stixbus_sources")
    count = len(sources) if isinstance(sources, list) else 0
    revoked = " REVOKED" if indicator.get("revoked") else ""
    return escape(f"{indicator.get('pattern')} · {tlps} · {count} source(s){revoked}")


async def _collect_all(
    settings: Settings, topics: list[str]
) -> dict[str, dict[str, dict[str, object]]]:
    """Latest version of every object on each topic (id -> object), read concurrently."""

    async def one(topic: str) -> tuple[str, dict[str, dict[str, object]]]:
        latest: dict[str, dict[str, object]] = {}
        subscriber = topic.removeprefix(_names(settings).deliver(""))  # reads as that org (ACLs)
        async for record in read_topic(
            client_kwargs(settings, subscriber),
            topic,
            from_beginning=True,
            max_wait=10,
            max_record_bytes=settings.max_record_bytes,
        ):
            obj = record.json()
            if isinstance(obj, dict):
                latest[str(obj.get("id"))] = obj
        return topic, latest

    return dict(await asyncio.gather(*(one(t) for t in topics)))


def down(
    kafka: Annotated[bool, typer.Option(help="Also stop the local Kafka broker")] = True,
) -> None:
    """Stop the worker and the local Kafka broker (fine when already stopped)."""
    settings = get_settings()
    stopped = supervisor.stop_service(settings, "taxii")
    out.print("taxii stopped" if stopped else "taxii not running")
    stopped = supervisor.stop_service(settings, "sinks")
    out.print("sinks stopped" if stopped else "sinks not running")
    out.print("worker stopped" if supervisor.stop_worker(settings) else "worker not running")
    if kafka:
        _kafka("down", settings)


def worker(loglevel: Annotated[str, typer.Option(help="Log level")] = "info") -> None:
    """Run the Faust worker in the foreground."""
    from stixbus.worker import run_worker

    settings = get_settings()
    if uses_sasl(settings) and not settings.sasl_username:
        # Every client in the worker process (Faust, lag sampler...) acts as the worker.
        settings = settings.model_copy(update={"sasl_username": WORKER})
    _check_topics(settings)
    sys.argv = [sys.argv[0]]  # faust's Worker parses argv; ours are already consumed
    run_worker(settings, loglevel)


def topics() -> None:
    """List stixbus topics on the broker (create missing ones first)."""
    settings = get_settings()
    _create_topics(settings)
    for name in run_on_broker(list_topics(client_kwargs(settings))):
        if name.startswith(settings.topic_prefix + "."):
            out.print(name)



def settings() -> None:
    """Print the effective settings (from STIXBUS_* environment variables)."""
    out.print_json(get_settings().model_dump_json())
