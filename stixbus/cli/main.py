"""`stixbus` command line: run the local bus, publish, consume, inspect.

Every failure is one line on stderr (`stixbus: <what> — <what to do>`) and a non-zero exit;
`STIXBUS_DEBUG=1` shows tracebacks.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from schemas.org import load_registry
from stixbus import supervisor
from stixbus.cli import agreements as agreements_commands
from stixbus.cli import security as security_commands
from stixbus.files import private_files
from stixbus.kafka.acls import ADMIN, WORKER, group_prefix, may_use_group
from stixbus.kafka.admin import ensure_topics, list_topics
from stixbus.kafka.client import VersionFilter, publish, read_topic
from stixbus.kafka.config import client_kwargs, uses_sasl
from stixbus.kafka.topics import TopicNames, TopicSpec
from stixbus.settings import Settings, get_settings

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
out = Console()
err = Console(stderr=True)

DEMO_PUBLISHERS = ("cert", "bank-a", "isp-one")

AsOrg = Annotated[str, typer.Option("--as", help="Org id from the registry (deploy/orgs.yaml)")]


class CliError(Exception):
    """A failure the user can act on; printed as one line."""


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
        raise CliError(
            f"kafka {action} failed (see the lines above; logs: {settings.home}/kafka/logs)"
        )


def _topic_specs(settings: Settings) -> list[TopicSpec]:
    registry = load_registry(settings.registry_path)
    return _names(settings).all_specs(
        registry, settings.partitions, settings.max_record_bytes, app_id=settings.app_id
    )


def _create_topics(settings: Settings) -> list[str]:
    """Create every missing topic as admin (the worker may not: docs/security.md)."""
    conn = client_kwargs(settings, ADMIN)
    return asyncio.run(ensure_topics(conn, _topic_specs(settings), settings.replication_factor))


def _check_topics(settings: Settings) -> None:
    """The worker's topics must exist before it starts: it has no right to create them."""
    present = set(asyncio.run(list_topics(client_kwargs(settings, WORKER))))
    missing = sorted(s.name for s in _topic_specs(settings) if s.name not in present)
    if missing:
        raise CliError(
            f"topics missing on {settings.bootstrap_servers}: {', '.join(missing)}; the worker "
            "creates none (least privilege): run `stixbus topics` (as admin) or `stixbus up` first"
        )


@cli.command()
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
            f"ACLs created {len(applied.acls.create)}, removed {len(applied.acls.delete)} "
            "(stixbus security show)"
        )
    created = _create_topics(settings)
    out.print(f"topics: {len(created)} created under prefix '{settings.topic_prefix}'")
    written, _ = agreements_commands.apply_file(settings, settings.agreements_path, prune=False)
    out.print(f"agreements: {settings.agreements_path} applied ({len(written)} changed)")
    pid = supervisor.start_worker(settings)
    out.print(f"worker: pid {pid}, log {supervisor.log_file(settings)}")
    if not supervisor.wait_ready(settings):
        err.print(supervisor.log_tail(settings))
        raise CliError(f"the worker did not become ready; log: {supervisor.log_file(settings)}")
    out.print(
        f"worker ready on http://127.0.0.1:{settings.web_port} "
        f"({time.monotonic() - started:.1f}s since `up` started)"
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
        sent = asyncio.run(publish(client_kwargs(settings, org), names.ingest(org), payload))
        out.print(f"published deploy/demo/{org}.json as {org} (submission {sent.submission_id})")
    topics = [names.deliver(s.id) for s in registry.subscribers]
    received: dict[str, dict[str, dict[str, object]]] = {}
    while time.monotonic() - sent_at < 20:
        time.sleep(1.0)
        received = asyncio.run(_collect_all(settings, topics))
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
            client_kwargs(settings, subscriber), topic, from_beginning=True, max_wait=10
        ):
            obj = record.json()
            if isinstance(obj, dict):
                latest[str(obj.get("id"))] = obj
        return topic, latest

    return dict(await asyncio.gather(*(one(t) for t in topics)))


@cli.command()
def down(
    kafka: Annotated[bool, typer.Option(help="Also stop the local Kafka broker")] = True,
) -> None:
    """Stop the worker and the local Kafka broker (fine when already stopped)."""
    settings = get_settings()
    out.print("worker stopped" if supervisor.stop_worker(settings) else "worker not running")
    if kafka:
        _kafka("down", settings)


@cli.command()
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


@cli.command()
def topics() -> None:
    """List stixbus topics on the broker (create missing ones first)."""
    settings = get_settings()
    _create_topics(settings)
    for name in asyncio.run(list_topics(client_kwargs(settings))):
        if name.startswith(settings.topic_prefix + "."):
            out.print(name)


@cli.command("publish")
def publish_cmd(
    as_org: AsOrg,
    file: Annotated[str, typer.Argument(help="STIX 2.1 bundle or object (JSON); - for stdin")],
) -> None:
    """Publish a STIX bundle or object as ORG; prints the submission id (see `stixbus receipts`)."""
    settings = get_settings()
    registry = load_registry(settings.registry_path)
    org = registry.get(as_org)
    if not org.publishes:
        raise CliError(f"org {as_org!r} has no publisher role in {settings.registry_path}")
    payload = sys.stdin.buffer.read() if file == "-" else _read(Path(file))
    conn = client_kwargs(settings, org.id)
    sent = asyncio.run(publish(conn, _names(settings).ingest(org.id), payload))
    sys.stdout.write(
        orjson.dumps({"submission_id": sent.submission_id, "topic": sent.topic}).decode() + "\n"
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc


@cli.command()
def consume(
    as_org: AsOrg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep waiting for more")] = False,
    from_beginning: Annotated[bool, typer.Option("--from-beginning")] = False,
    group: Annotated[
        str | None, typer.Option(help="Consumer group (commits offsets); default: none")
    ] = None,
    seen_file: Annotated[
        Path | None,
        typer.Option(help="Remember printed versions here, to drop redeliveries across restarts"),
    ] = None,
) -> None:
    """Print what ORG received on stixbus.deliver.ORG, one JSON object per line.

    A redelivered (id, modified) is dropped, so output is idempotent across worker crashes
    (and across restarts of this command with --group and --seen-file).
    """
    settings = get_settings()
    registry = load_registry(settings.registry_path)
    org = registry.get(as_org)
    own_groups = group_prefix(settings.topic_prefix, org.id)
    if (
        group is not None
        and uses_sasl(settings)
        and not may_use_group(settings.topic_prefix, org.id, group)
    ):
        raise CliError(
            f"consumer group {group!r}: org {org.id!r} may only use {own_groups[:-1]!r} or groups "
            f"starting with {own_groups!r} (Kafka ACL); use e.g. --group {own_groups}siem"
        )
    _print_topic(
        settings,
        _names(settings).deliver(org.id),
        follow,
        from_beginning,
        group,
        VersionFilter(seen_file),
        org.id,
    )


@cli.command()
def receipts(
    as_org: AsOrg,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
) -> None:
    """Print ORG's submission receipts (accepted/rejected counts and reasons) as JSON lines."""
    settings = get_settings()
    org = load_registry(settings.registry_path).get(as_org)
    _print_topic(settings, _names(settings).receipts(org.id), follow, True, None, None, org.id)


def _print_topic(
    settings: Settings,
    topic: str,
    follow: bool,
    from_beginning: bool,
    group: str | None,
    seen: VersionFilter | None,
    principal: str | None = None,
) -> None:

    async def run() -> None:
        async for record in read_topic(
            client_kwargs(settings, principal),
            topic,
            group_id=group,
            from_beginning=from_beginning,
            follow=follow,
        ):
            obj = record.json()
            if seen is not None and not seen.is_new(obj):
                continue
            sys.stdout.write(orjson.dumps(obj).decode() + "\n")
            sys.stdout.flush()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


@cli.command()
def settings() -> None:
    """Print the effective settings (from STIXBUS_* environment variables)."""
    out.print_json(get_settings().model_dump_json())


# Command groups live in stixbus/cli/<group>.py, each exposing `app: typer.Typer`.
# Add one with: `cli.add_typer(<module>.app, name="<group>")` below (one line per group).
# -- command groups --
from stixbus.cli import status as _status  # noqa: E402

cli.command("status")(_status.status)
cli.add_typer(agreements_commands.app, name="agreements")
cli.command("explain")(agreements_commands.explain)
cli.command("audit")(agreements_commands.audit)
cli.add_typer(security_commands.app, name="security")
from stixbus.cli import connector  # noqa: E402

cli.add_typer(connector.app, name="connector")
# -- end command groups --


def main() -> None:
    # Every file the CLI, the worker and the connectors create (state, logs, credentials) is
    # the owner's alone: folders 0700, files 0600 (docs/security.md, "Files").
    private_files()
    try:
        # standalone_mode=False returns typer.Exit codes instead of exiting: pass them on.
        code = cli(standalone_mode=False)
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except (
        CliError,
        agreements_commands.AgreementsError,
        ValueError,
        KeyError,
        LookupError,
    ) as exc:
        err.print(f"stixbus: {exc}", highlight=False)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:  # one line for the user; the traceback on request
        if os.environ.get("STIXBUS_DEBUG"):
            raise
        if isinstance(exc, (typer.BadParameter, SystemExit)):
            raise
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        err.print(f"stixbus: {type(exc).__name__}: {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
