"""`stixbus agreements apply|check|list|retire`, `stixbus explain`, `stixbus audit`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from schemas.agreement import Agreement, AgreementSet, load_agreements
from schemas.org import load_registry
from schemas.tlp import TLP
from stixbus.core.decay import DecayPolicy, expires_at
from stixbus.core.decide import AgreementIndex
from stixbus.core.ids import stix_time
from stixbus.core.lint import Severity, check_agreements
from stixbus.core.normalise import normalise_submission
from stixbus.errors import NotFound, UserError
from stixbus.kafka.client import read_topic, run_on_broker, start_client
from stixbus.kafka.config import client_kwargs
from stixbus.kafka.topics import TopicNames
from stixbus.settings import Settings, get_settings
from stixbus.warninglists import guard_index

app = typer.Typer(no_args_is_help=True, help="Sharing agreements: lint, apply (hot reload), list.")
out = Console()


class AgreementsError(UserError):
    """An agreements file that does not pass, or an agreement that is not in force."""


async def agreements_in_force(settings: Settings) -> dict[str, dict[str, Any]]:
    """The compacted topic replayed: agreement id -> agreement JSON (retired ones absent)."""
    current: dict[str, dict[str, Any]] = {}
    topic = TopicNames(settings.topic_prefix).agreements
    async for record in read_topic(
        client_kwargs(settings),
        topic,
        from_beginning=True,
        max_wait=10,
        max_record_bytes=settings.max_record_bytes,
    ):
        key = (record.key or b"").decode()
        if record.value:
            current[key] = orjson.loads(record.value)
        else:
            current.pop(key, None)
    return current


async def write_agreements(settings: Settings, updates: list[Agreement], retire: list[str]) -> None:
    topic = TopicNames(settings.topic_prefix).agreements
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", enable_idempotence=True)
    await start_client(producer)
    try:
        for agreement in updates:
            await producer.send_and_wait(
                topic, agreement.model_dump_json().encode(), key=agreement.id.encode()
            )
        for agreement_id in retire:
            await producer.send_and_wait(topic, None, key=agreement_id.encode())  # tombstone
    finally:
        await producer.stop()


def apply_file(settings: Settings, path: Path, prune: bool = True) -> tuple[list[str], list[str]]:
    """Validate and lint `path`, then make the agreements topic match it.

    Returns (ids written, ids retired).  Only changed agreements are written.
    """
    registry = load_registry(settings.registry_path)
    agreements = load_agreements(path)
    errors = [
        f
        for f in check_agreements(agreements, registry, datetime.now(UTC))
        if f.severity is Severity.ERROR
    ]
    if errors:
        listed = "; ".join(f"{f.agreement_id}: {f.message}" for f in errors)
        raise AgreementsError(
            f"{path} has {len(errors)} error(s), nothing applied: {listed}",
            f"fix them (`stixbus agreements check {path}` lists them) and apply again",
        )
    current = run_on_broker(agreements_in_force(settings))
    changed = [a for a in agreements if current.get(a.id) != orjson.loads(a.model_dump_json())]
    wanted = {a.id for a in agreements}
    retire = sorted(set(current) - wanted) if prune else []
    run_on_broker(write_agreements(settings, changed, retire))
    return [a.id for a in changed], retire


@app.command("apply")
def apply_cmd(
    file: Annotated[Path, typer.Argument(help="Agreements YAML")],
    prune: Annotated[bool, typer.Option(help="Retire agreements missing from FILE")] = True,
) -> None:
    """Validate FILE, then publish it to the compacted agreements topic (workers reload live)."""
    written, retired = apply_file(get_settings(), file, prune)
    out.print(f"applied {len(written)} agreement(s): {', '.join(written) or '-'}")
    out.print(f"retired {len(retired)} agreement(s): {', '.join(retired) or '-'}")


@app.command("retire")
def retire_cmd(agreement_id: str) -> None:
    """Retire one agreement (a tombstone on the agreements topic); workers stop routing under it."""
    settings = get_settings()
    in_force = run_on_broker(agreements_in_force(settings))
    if agreement_id not in in_force:
        raise AgreementsError(
            f"agreement {agreement_id!r} is not in force, nothing retired "
            f"(in force: {', '.join(sorted(in_force)) or 'none'})",
            "pick one from `stixbus agreements list`",
        )
    run_on_broker(write_agreements(settings, [], [agreement_id]))
    out.print(f"retired {agreement_id} (version {in_force[agreement_id].get('version')})")


@app.command("list")
def list_cmd() -> None:
    """The agreements in force on the bus (replayed from the agreements topic)."""
    in_force = sorted(run_on_broker(agreements_in_force(get_settings())).items())
    # The id (what `retire` and `explain` take) and the ceiling are never cut, whatever the
    # terminal width; the party lists wrap.
    longest = max((len(agreement_id) for agreement_id, _ in in_force), default=2)
    table = Table(
        Column("id", no_wrap=True, min_width=longest),
        "version",
        "publishers",
        "subscribers",
        Column("TLP ceiling", no_wrap=True, min_width=max(len(tlp.label) for tlp in TLP)),
        "term",
    )
    for agreement_id, data in in_force:
        a = Agreement.model_validate(data)
        table.add_row(
            agreement_id,
            str(a.version),
            ", ".join(a.publishers),
            ", ".join(a.subscribers),
            a.tlp_ceiling.label,
            f"{a.term.valid_from:%Y-%m-%d} … {a.term.valid_until:%Y-%m-%d}",
        )
    out.print(table)


@app.command("check")
def check_cmd(file: Annotated[Path, typer.Argument(help="Agreements YAML")]) -> None:
    """Lint FILE: unknown parties, RED via sector, AMBER+STRICT onward, overlaps, orphans, ended."""
    settings = get_settings()
    findings = check_agreements(
        load_agreements(file), load_registry(settings.registry_path), datetime.now(UTC)
    )
    for f in findings:
        out.print(
            f"{f.severity.value:7} {f.agreement_id or '-':28} {f.code.value:28} {escape(f.message)}"
        )
    errors = sum(f.severity is Severity.ERROR for f in findings)
    out.print(f"{len(findings)} finding(s), {errors} error(s)")
    if errors:
        # An exception, not typer.Exit(1): `stixbus.cli.main.main` runs click with
        # standalone_mode=False, which turns Exit into a return value and the status into 0.
        raise AgreementsError(
            f"{file}: {errors} error(s)", "fix them before `stixbus agreements apply`"
        )


def explain(
    object_file: Annotated[Path, typer.Option("--object", help="STIX object or bundle (JSON)")],
    to: Annotated[str, typer.Option("--to", help="Subscriber org id")],
    as_org: Annotated[str, typer.Option("--as", help="Publisher org id")] = "cert",
    agreements_file: Annotated[
        Path | None, typer.Option("--agreements", help="YAML instead of what is in force")
    ] = None,
) -> None:
    """Why would (or did) ORG (not) get this object? Every reason and the deciding agreement."""
    settings = get_settings()
    registry = load_registry(settings.registry_path)
    publisher, subscriber = registry.get(as_org), registry.get(to)
    if agreements_file is not None:
        agreements: AgreementSet | list[Agreement] = load_agreements(agreements_file)
    else:
        in_force = run_on_broker(agreements_in_force(settings))
        agreements = [Agreement.model_validate(d) for d in in_force.values()]
    now = datetime.now(UTC)
    try:
        payload = object_file.read_bytes()
    except OSError as exc:
        raise NotFound(f"cannot read {object_file}: {exc.strerror}", "check the file name") from exc
    outcome = normalise_submission(
        payload,
        publisher,
        registry,
        settings.limits,
        submission_id="explain",
        received_at=now,
        published_at=now,
    )
    for rejection in outcome.receipt.rejections:
        out.print(
            f"REJECTED at ingest {rejection.object_id or ''}: {rejection.reason.value}: "
            f"{escape(rejection.message)}"
        )
    index = AgreementIndex(tuple(agreements), registry)
    guard = guard_index(registry, settings.guard_lists) if settings.guard_enabled else None
    decay = DecayPolicy.from_seconds(settings.decay_lifetimes)
    by_id = {a.id: a for a in agreements}
    for record in outcome.accepted:
        hits = guard.object_hits(record) if guard is not None else ()
        listed = tuple(sorted({h.list_name for h in hits}))
        decision = index.decide(record, publisher, subscriber, now, listed)
        verdict = "ALLOW" if decision.allow else "DENY"
        by = f"{decision.agreement_id} v{decision.agreement_version}" if decision.allow else "-"
        out.print(
            f"[bold]{verdict}[/] {record.object_id} {as_org} → {to} (agreement {by}, "
            f"TLP {record.tlp.label})"
        )
        for hit in hits:
            title = guard.lists[hit.list_name].title if guard is not None else ""
            out.print(
                f"  ! on warninglist {hit.list_name} ({escape(title)}): {hit.observable_type} "
                f"{escape(repr(hit.value))}"
            )
        for reason in decision.reasons:
            out.print(
                f"  - {reason.code_text}: {escape(reason.message)}"
                # escaped: rich would take "[agreement-id]" for a style tag and drop it
                + (escape(f" [{reason.agreement_id}]") if reason.agreement_id else "")
            )
        for t in decision.transformations:
            out.print(f"  * {t.kind.value}: {escape(t.detail)}")
        agreement = by_id.get(decision.agreement_id or "")
        if decision.allow and agreement is not None and record.canonical_pattern is not None:
            at, why = expires_at(
                record.object.get("valid_until"),
                record.observable_types,
                record.object.get("valid_from"),
                now,
                decay,
                agreement.max_age,
            )
            when = "never" if at is None else f"at {stix_time(at)}"
            out.print(f"  expires for {to}: {when} ({escape(why)}), if published now")


def audit(
    to: Annotated[str | None, typer.Option("--to", help="Subscriber org id")] = None,
    since: Annotated[
        str | None, typer.Option(help="ISO time, e.g. 2026-11-29T10:00:00+00:00")
    ] = None,
    denied_only: Annotated[bool, typer.Option("--denied", help="Only denials")] = False,
) -> None:
    """Audit records (one per routing decision), as JSON lines; `verify` checks completeness."""
    settings = get_settings()
    try:
        floor = datetime.fromisoformat(since) if since else None
    except ValueError:
        raise UserError(
            f"--since {since!r} is not an ISO 8601 time", "use e.g. 2026-11-29T10:00:00+00:00"
        ) from None
    if floor is not None and floor.tzinfo is None:
        floor = floor.replace(tzinfo=UTC)

    async def run() -> None:
        topic = TopicNames(settings.topic_prefix).audit
        async for record in read_topic(
            client_kwargs(settings),
            topic,
            from_beginning=True,
            max_record_bytes=settings.max_record_bytes,
        ):
            folded = orjson.loads(record.value)
            # One entry per route step (schemas/audit.py), its decisions folded in; records
            # written before the fold are one decision each.
            for entry in folded.get("decisions", [folded]) if "audit_id" in folded else [folded]:
                if to and entry.get("subscriber") != to:
                    continue
                if denied_only and entry.get("allow"):
                    continue
                if floor and datetime.fromisoformat(entry["decided_at"]) < floor:
                    continue
                sys.stdout.write(orjson.dumps(entry).decode() + "\n")

    run_on_broker(run())
