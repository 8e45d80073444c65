"""Feedback: aggregate-sighting throughput of the pure stages (docs/feedback.md).

Run: .venv/bin/python -m bench.feedback [--sightings 50000] [--keys 2000]

Per sighting, what the two feedback agents do for it, table encoding included:
1. index: decode the delivered id's entry, `accept_report` (one contribution per source);
2. aggregate: decode the key's `KeyFeedback`, `contribute`, encode it back.
Sightings come from the 8 subscribing members of deploy/orgs.yaml about `--keys` CERT
indicators (each delivered to every member as its own minted id), each a new sighting object.
Measured with the default coalescing window (60 s: most sightings are held back) and with none
(every sighting emits a new aggregate version). Target: 10k sightings/s into the aggregator.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

from schemas.feedback import DeliveryFact, FeedbackReport, ReportKind
from schemas.org import load_registry
from stixbus.core.feedback import DeliveredIndex, KeyFeedback, accept_report, contribute
from stixbus.core.ids import stix_time
from stixbus.settings import Settings

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sightings", type=int, default=50_000)
    parser.add_argument("--keys", type=int, default=2_000)
    args = parser.parse_args()
    registry = load_registry(Settings().registry_path)
    members = [o.id for o in registry.subscribers if o.publishes and o.id != "cert"]
    rng = random.Random(7)
    keys = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(args.keys)]
    sources = {k: f"indicator--{uuid.UUID(int=rng.getrandbits(128))}" for k in keys}
    index: dict[str, bytes] = {}
    targets: list[tuple[str, str, str]] = []  # (reporter, delivered id, key)
    for key in keys:
        for org in members:
            delivered = f"indicator--{uuid.uuid5(registry.bus.namespace, f'{key}/{org}')}"
            fact = DeliveryFact(
                delivered_id=delivered, subscriber=org, agreement_id="cert-to-banks-fraud",
                attribution=rng.choice(["attributed", "anonymous"]), dedup_key=key,
                sources=[{"publisher": "cert", "object_id": sources[key]}], decided_at=T0,
            )  # fmt: skip
            entry = DeliveredIndex.decode(index.get(delivered))
            index[delivered] = DeliveredIndex({**entry.recipients, org: fact}).encode()
            targets.append((org, delivered, key))
    reports = []
    for n in range(args.sightings):
        org, delivered, _ = rng.choice(targets)
        at = T0 + timedelta(milliseconds=n)
        report = FeedbackReport(
            submission_id=str(n), reporter=org, received_at=at,
            report_id=f"sighting--{uuid.UUID(int=rng.getrandbits(128))}",
            modified=stix_time(at), kind=ReportKind.SIGHTING, target_id=delivered,
            pointer="/sighting_of_ref", count=rng.randint(1, 5),
            first_seen=stix_time(at), last_seen=stix_time(at),
        )  # fmt: skip
        reports.append(report)
    print(f"feedback bench: {args.sightings} sightings, {args.keys} keys, {len(members)} members")
    for window in (60.0, 0.0):
        table: dict[str, bytes] = {}
        emitted = 0
        # CPU time of this process (one core), so other load on the machine does not count;
        # wall time alongside.
        wall, start = time.perf_counter(), time.process_time()
        outcomes = [
            accept_report(DeliveredIndex.decode(index[r.target_id]), r) for r in reports
        ]
        index_cpu = time.process_time() - start
        start = time.process_time()
        for report, outcome in zip(reports, outcomes, strict=True):
            for c in outcome.contributions:
                state = KeyFeedback.decode(table.get(c.dedup_key))
                step = contribute(state, c, registry, report.received_at, window)
                emitted += len(step.outputs)
                table[c.dedup_key] = step.state.encode()
        agg_cpu = time.process_time() - start
        wall = time.perf_counter() - wall
        n = len(reports)
        print(
            f"  window {window:>4.0f}s: {n / agg_cpu:>9,.0f} sightings/s into the aggregator, "
            f"{n / index_cpu:>9,.0f}/s through the index, {n / (agg_cpu + index_cpu):>9,.0f}/s "
            f"both (CPU time; wall {n / wall:,.0f}/s); {emitted} aggregate versions emitted"
        )


if __name__ == "__main__":
    main()
