"""`stixbus publish|consume|receipts`: send STIX as an org, read what an org received."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
from aiokafka.errors import MessageSizeTooLargeError

from schemas.org import load_registry
from stixbus.errors import NotFound, UserError
from stixbus.kafka.acls import group_prefix, may_use_group
from stixbus.kafka.client import VersionFilter, publish, read_topic, run_on_broker
from stixbus.kafka.config import client_kwargs, uses_sasl
from stixbus.kafka.topics import TopicNames
from stixbus.settings import Settings, get_settings

AsOrg = Annotated[str, typer.Option("--as", help="Org id from the registry (deploy/orgs.yaml)")]


def register(cli: typer.Typer) -> None:
    """Add this module's commands to the `stixbus` app."""
    cli.command("publish")(publish_cmd)
    cli.command()(consume)
    cli.command()(receipts)


def _names(settings: Settings) -> TopicNames:
    return TopicNames(settings.topic_prefix)


def publish_cmd(
    as_org: AsOrg,
    file: Annotated[str, typer.Argument(help="STIX 2.1 bundle or object (JSON); - for stdin")],
) -> None:
    """Publish a STIX bundle or object as ORG; prints the submission id (see `stixbus receipts`)."""
    settings = get_settings()
    registry = load_registry(settings.registry_path)
    org = registry.get(as_org)
    if not org.publishes:
        raise UserError(
            f"org {as_org!r} has no publisher role in {settings.registry_path}",
            "publish as an org with `publishes: true`, or give this org that role",
        )
    payload = sys.stdin.buffer.read() if file == "-" else _read(Path(file))
    limit = settings.limits.message_bytes
    if len(payload) > limit:
        raise UserError(*_too_big(file, len(payload), limit))
    conn = client_kwargs(settings, org.id)
    topic = _names(settings).ingest(org.id)
    try:
        sent = run_on_broker(
            publish(conn, topic, payload, max_record_bytes=settings.max_record_bytes)
        )
    except MessageSizeTooLargeError as exc:
        raise UserError(*_too_big(file, len(payload), limit, broker=True)) from exc
    sys.stdout.write(
        orjson.dumps({"submission_id": sent.submission_id, "topic": sent.topic}).decode() + "\n"
    )


def _too_big(file: str, size: int, limit: int, broker: bool = False) -> tuple[str, str]:
    source = "stdin" if file == "-" else file
    if broker:
        return (
            f"the broker refused {source} ({size:,} bytes, MessageSizeTooLarge): its ingest topic "
            f"takes less than the ingest limit of {limit:,} bytes",
            "split it into smaller bundles, or ask the operator to raise the topic's "
            "max.message.bytes",
        )
    return (
        f"{source} is {size:,} bytes ({size / 1e6:.1f} MB), over the ingest limit of {limit:,} "
        "bytes (STIXBUS_LIMIT_MESSAGE_BYTES)",
        "split it into several bundles under the limit and publish each",
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise NotFound(f"cannot read {path}: {exc.strerror}", "check the file name") from exc


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
        raise UserError(
            f"consumer group {group!r}: org {org.id!r} may only use {own_groups[:-1]!r} or groups "
            f"starting with {own_groups!r} (Kafka ACL)",
            f"use e.g. --group {own_groups}siem",
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
            max_record_bytes=settings.max_record_bytes,
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
        run_on_broker(run())
    except KeyboardInterrupt:
        pass
