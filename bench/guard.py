"""The false-positive guard: lookups per second, and what it costs the route stage.

Run: .venv/bin/python -m bench.guard [--lookups 400000] [--keys 4000]

1. index build: every chosen MISP warninglist (stixbus/core/guard.py CHOSEN_LISTS) plus the
   example registry's own domains and networks (what a worker does once at start);
2. lookups/s on one core: canonical observables, a third each domains (with the parent walk),
   IPv4 addresses and URLs, a tenth of them listed (target >= 200k/s);
3. route stage: `route_step` for new keys (CERT indicators, the example agreements, every
   subscriber, a tenth listed) with and without the guard in the same run, interleaved, best
   of several rounds (target: at most 10% slower).
Times are the process's CPU time (time.process_time), so a busy machine inflates them less.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from datetime import UTC, datetime

import orjson

from schemas.agreement import load_agreements
from schemas.envelope import NormalizedObject
from stixbus.core.decide import AgreementIndex
from stixbus.core.deliveries import RouteConfig
from stixbus.core.guard import CHOSEN_LISTS, build_index
from stixbus.core.normalise import normalise_submission
from stixbus.core.route_step import route_step
from stixbus.settings import Limits
from stixbus.warninglists import load_lists
from tests.helpers.paths import REPO_ROOT, example_registry

REGISTRY = example_registry()
INDEX = AgreementIndex(load_agreements(REPO_ROOT / "deploy" / "agreements.yaml"), REGISTRY)
T0 = datetime(2026, 6, 1, tzinfo=UTC)
LISTED = [
    ("domain-name", "google.com"),
    ("domain-name", "login.microsoftonline.com"),
    ("ipv4-addr", "8.8.8.8"),
    ("ipv4-addr", "198.51.100.23"),
    ("url", "https://docs.google.com/forms/d/x"),
]


def observables(count: int, rng: random.Random) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for n in range(count):
        if rng.random() < 0.1:
            out.append(rng.choice(LISTED))
            continue
        kind = n % 3
        if kind == 0:
            out.append(("domain-name", f"a{n}.login-{rng.randrange(10**6)}.example"))
        elif kind == 1:
            out.append(("ipv4-addr", f"11.{rng.randrange(256)}.{rng.randrange(256)}.{n % 250}"))
        else:
            out.append(("url", f"http://pay-{rng.randrange(10**6)}.example/{n}"))
    return out


def record(kind: str, value: str) -> NormalizedObject:
    obj = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": "2026-05-01T00:00:00.000Z",
        "modified": "2026-05-01T00:00:00.000Z",
        "name": "bench",
        "pattern": f"[{kind}:value = '{value}']",
        "pattern_type": "stix",
        "valid_from": "2026-05-01T00:00:00Z",
        "indicator_types": ["malicious-activity"],
        "labels": ["phishing"],
        "confidence": 80,
    }
    outcome = normalise_submission(
        orjson.dumps(obj), REGISTRY.get("cert"), REGISTRY, Limits(),
        submission_id="bench", received_at=T0, published_at=T0,
    )  # fmt: skip
    (accepted,) = outcome.accepted
    return accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=400_000)
    parser.add_argument("--keys", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(16)

    started = time.process_time()
    documents = load_lists(CHOSEN_LISTS)
    guard = build_index(documents, REGISTRY)
    built = time.process_time() - started
    entries = sum(len(d["list"]) for d in documents)
    print(f"index: {len(guard.lists)} lists, {entries} entries, built in {built:.2f} s")

    values = observables(args.lookups, rng)
    lookup = guard.observable
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        hits = 0
        for kind, value in values:
            if lookup(kind, value):
                hits += 1
        best = min(best, time.process_time() - started)
    print(
        f"lookups: {len(values) / best:,.0f}/s on one core ({hits / len(values):.0%} listed; "
        "target >= 200,000/s)"
    )

    records = [record(kind, value) for kind, value in observables(args.keys, rng)]
    plain, guarded = RouteConfig(), RouteConfig(guard=guard)
    times: dict[str, float] = {"without": float("inf"), "with": float("inf")}
    for _ in range(args.rounds):
        for label, config in (("without", plain), ("with", guarded)):
            # a fresh index per round: the decision memo and routing cache start cold for both
            index = AgreementIndex(INDEX.agreements, REGISTRY)
            guard._pattern_cache.clear()
            started = time.process_time()
            for rec in records:
                route_step(rec, None, REGISTRY, index, T0, config, 3600.0)
            times[label] = min(times[label], time.process_time() - started)
    slowdown = times["with"] / times["without"] - 1
    print(
        f"route stage (route_step, new keys): {len(records) / times['without']:,.0f}/s without "
        f"the guard, {len(records) / times['with']:,.0f}/s with it: {slowdown:+.1%} "
        "(target <= +10%)"
    )


if __name__ == "__main__":
    main()
