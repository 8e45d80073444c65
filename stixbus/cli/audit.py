"""`stixbus audit` (decisions as JSON lines) and `stixbus audit verify` (completeness)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import orjson
import typer

from schemas.audit import AuditEntry
from schemas.org import load_registry
from stixbus.cli import agreements
from stixbus.core.audit import Delivered, check_audit
from stixbus.errors import UserError
from stixbus.kafka.client import read_topic, run_on_broker
from stixbus.kafka.config import client_kwargs
from stixbus.kafka.topics import TopicNames
from stixbus.settings import get_settings

app = typer.Typer(
    help="Audit records: every decision, and who received what", invoke_without_command=True
)
# What the route agent sends along with indicators; not audited deliveries (core/companions.py).
COMPANION_TYPES = frozenset({"identity", "marking-definition"})


@app.callback()
def audit(
    ctx: typer.Context,
    to: Annotated[str | None, typer.Option("--to", help="Subscriber org id")] = None,
    since: Annotated[
        str | None, typer.Option(help="ISO time, e.g. 2026-11-29T10:00:00+00:00")
    ] = None,
    denied_only: Annotated[bool, typer.Option("--denied", help="Only denials")] = False,
) -> None:
    """Audit records (one per routing decision), as JSON lines."""
    if ctx.invoked_subcommand is None:
        agreements.audit(to=to, since=since, denied_only=denied_only)


def _time(option: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(
            f"{option} {text!r} is not an ISO 8601 time", "use e.g. 2026-11-29T10:00:00+00:00"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@app.command()
def verify(
    since: Annotated[str | None, typer.Option(help="Deliveries from this ISO time")] = None,
    until: Annotated[str | None, typer.Option(help="Deliveries up to this ISO time")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Only this subscriber")] = None,
) -> None:
    """Check that every delivery on deliver.<org> in the time range has exactly one audit
    record (audit ids count once: a replayed step repeats its id).  Exit 1 on a gap."""
    settings = get_settings()
    floor, ceiling = _time("--since", since), _time("--until", until)
    names = TopicNames(settings.topic_prefix)
    subscribers = [o.id for o in load_registry(settings.registry_path).subscribers]
    if to is not None:
        if to not in subscribers:
            raise UserError(f"--to {to!r} is not a subscriber", "see deploy/orgs.yaml")
        subscribers = [to]
    conn = client_kwargs(settings)
    limit = settings.max_record_bytes

    async def run() -> tuple[list[Delivered], list[AuditEntry]]:
        delivered: list[Delivered] = []
        for org in subscribers:
            async for record in read_topic(
                conn, names.deliver(org), from_beginning=True, max_record_bytes=limit
            ):
                at = datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
                if (floor and at < floor) or (ceiling and at > ceiling):
                    continue
                obj = orjson.loads(record.value)
                if obj.get("type") not in COMPANION_TYPES:
                    delivered.append((org, obj["id"], obj.get("modified")))
        entries = []
        async for record in read_topic(
            conn, names.audit, from_beginning=True, max_record_bytes=limit
        ):
            raw = orjson.loads(record.value)
            if "audit_id" in raw:  # earlier records (one per decision) list no deliveries
                entries.append(AuditEntry.model_validate(raw))
        return delivered, entries

    delivered, entries = run_on_broker(run())
    result = check_audit(delivered, entries)
    print(  # plain: one line, not wrapped to a terminal width
        f"deliveries checked: {result.delivered}  audit entries: {len(entries)}  "
        f"missing: {len(result.missing)}  duplicated: {len(result.duplicated)}  "
        f"audited, not on the topic: {result.audited_only}"
    )
    for label, rows in (("missing", result.missing), ("duplicated", result.duplicated)):
        for org, object_id, modified in rows[:20]:
            print(f"  {label}: {org} {object_id} {modified}")
    if not result.complete:
        raise typer.Exit(1)
