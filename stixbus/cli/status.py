"""`stixbus status`: what the running bus is doing, per org, in one screen.

Reads the worker's `/metrics` twice, `--window` seconds apart (rates = difference / window),
its `/readyz`, and the broker (subscriber lag, fresh, so lag shows even when the worker is down).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from schemas.org import load_registry
from stixbus.kafka.config import client_kwargs
from stixbus.kafka.lag import ObserveSettings, sample_once
from stixbus.kafka.topics import TopicNames
from stixbus.metrics import Snapshot, parse_metrics
from stixbus.settings import get_settings
from stixbus.supervisor import http_probe

out = Console()



def _scrape(base: str) -> Snapshot:
    _, body = http_probe(base + "/metrics")
    return parse_metrics(body.decode("utf-8", "replace"))


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "—"
    seconds = max(now - ts, 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _rate(now: dict[str, float], before: dict[str, float], org: str, window: float) -> str:
    if window <= 0:
        return "—"
    return f"{max(now.get(org, 0.0) - before.get(org, 0.0), 0.0) / window:.2f}"


def _int(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def status(
    url: Annotated[
        str | None,
        typer.Option(help="Worker base URL (default: http://127.0.0.1:$STIXBUS_WEB_PORT)"),
    ] = None,
    window: Annotated[
        float, typer.Option(help="Seconds between the two scrapes that give rates (0: none)")
    ] = 2.0,
) -> None:
    """Per-org rates in/out, rejections, lag, last activity; agreements; worker health."""
    settings = get_settings()
    base = (url or f"http://127.0.0.1:{settings.web_port}").rstrip("/")
    registry = load_registry(settings.registry_path)
    names = TopicNames(settings.topic_prefix)
    observe = ObserveSettings()
    subscribers = [o.id for o in registry.subscribers]

    worker_error: str | None = None
    ready: dict[str, Any] = {}
    first = second = Snapshot(at=time.monotonic())
    try:
        code, body = http_probe(base + "/readyz")
        ready = {"http_status": code, **orjson.loads(body)}
        first = _scrape(base)
        if window > 0:
            time.sleep(window)
            second = _scrape(base)
        else:
            second = first
    except (OSError, ValueError) as exc:
        worker_error = f"unreachable at {base} ({exc})"

    broker_error: str | None = None
    lags: dict[str, int | None] = {}
    try:
        lags = asyncio.run(
            sample_once(client_kwargs(settings), names, subscribers, observe.subscriber_group)
        )
    except Exception as exc:  # the broker being down is something to show, not to crash on
        broker_error = f"unreachable at {settings.bootstrap_servers} ({type(exc).__name__})"
        lags = {
            k: int(v) for k, v in second.by("stixbus_subscriber_lag_records", "subscriber").items()
        }

    span = second.at - first.at
    zero = None if worker_error else 0.0
    now = time.time()

    health = Table(title="Worker and broker", show_header=False)
    health.add_column("what")
    health.add_column("state")
    if worker_error:
        health.add_row("worker", f"[red]{worker_error}[/red]")
    else:
        is_ready = bool(ready.get("ready"))
        health.add_row(
            "worker",
            f"{base}  " + ("[green]ready[/green]" if is_ready else "[yellow]not ready[/yellow]"),
        )
        health.add_row(
            "readyz",
            ", ".join(f"{k}={v}" for k, v in ready.items() if k not in ("ready", "http_status")),
        )
        sampled = second.value("stixbus_subscriber_lag_sampled_timestamp_seconds")
        health.add_row("lag sampled by worker", _ago(sampled, now))
        suppressed = second.value("stixbus_objects_suppressed_total")
        health.add_row(
            "dedup keys / suppressed",
            f"{_int(second.value('stixbus_dedup_keys'))} / {_int(suppressed)}",
        )
    health.add_row(
        "broker",
        f"[red]{broker_error}[/red]" if broker_error else f"{settings.bootstrap_servers} reachable",
    )
    health.add_row(
        "topic prefix / subscriber groups", f"{settings.topic_prefix} / {observe.subscriber_group}"
    )
    out.print(health)

    subs_now = second.by("stixbus_submissions_total", "publisher")
    objs_now = second.by("stixbus_objects_received_total", "publisher")
    objs_before = first.by("stixbus_objects_received_total", "publisher")
    rejected = second.by("stixbus_objects_rejected_total", "publisher")
    deliv_now = second.by("stixbus_deliveries_total", "subscriber")
    deliv_before = first.by("stixbus_deliveries_total", "subscriber")
    revoked = second.by("stixbus_revocations_delivered_total", "subscriber")
    last_in = second.by("stixbus_last_submission_timestamp_seconds", "publisher")
    last_out = second.by("stixbus_last_delivery_timestamp_seconds", "subscriber")

    orgs = Table(title=f"Orgs (rates over {span:.1f}s)" if span > 0 else "Orgs (totals)")
    for column in (
        "org",
        "submissions",
        "objects in",
        "in/s",
        "rejected",
        "top rejection",
        "delivered",
        "out/s",
        "revocations",
        "lag",
        "last activity",
    ):
        orgs.add_column(column, justify="left" if column in ("org", "top rejection") else "right")
    for org in registry.orgs:
        reasons = second.by("stixbus_objects_rejected_total", "reason", publisher=org.id)
        top = max(reasons.items(), key=lambda kv: kv[1], default=None)
        last = max(last_in.get(org.id, 0.0), last_out.get(org.id, 0.0)) or None
        lag = lags.get(org.id)
        orgs.add_row(
            org.id,
            _int(subs_now.get(org.id)) if org.publishes else "",
            _int(objs_now.get(org.id)) if org.publishes else "",
            _rate(objs_now, objs_before, org.id, span) if org.publishes else "",
            _int(rejected.get(org.id, zero)) if org.publishes else "",
            f"{top[0]} ({top[1]:.0f})" if top and top[1] > 0 else "",
            _int(deliv_now.get(org.id, zero)) if org.subscribes else "",
            _rate(deliv_now, deliv_before, org.id, span) if org.subscribes else "",
            _int(revoked.get(org.id, zero)) if org.subscribes else "",
            ("—" if lag is None else str(lag)) if org.subscribes else "",
            _ago(last, now),
        )
    out.print(orgs)

    versions = second.by("stixbus_agreement_version", "agreement")
    per_agreement = second.by("stixbus_deliveries_total", "agreement")
    denials = second.by("stixbus_denials_total", "reason")
    agreements = Table(title="Agreements in force")
    agreements.add_column("agreement")
    agreements.add_column("version", justify="right")
    agreements.add_column("deliveries", justify="right")
    for agreement_id in sorted(set(versions) | set(per_agreement)):
        agreements.add_row(
            agreement_id,
            _int(versions.get(agreement_id)),
            _int(per_agreement.get(agreement_id, 0.0)),
        )
    out.print(agreements)
    if denials:
        denied = Table(title="Denials by reason")
        denied.add_column("reason")
        denied.add_column("count", justify="right")
        for reason, count in sorted(denials.items(), key=lambda kv: -kv[1]):
            denied.add_row(reason, _int(count))
        out.print(denied)
    if worker_error:
        sys.exit(1)
