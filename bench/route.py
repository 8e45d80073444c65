"""Routing decisions per second on one core: 20 agreements x 10 subscribers.

Run: .venv/bin/python -m bench.route [--seconds N]
Each decision is one (object, publisher, subscriber) triple; objects vary TLP, type, labels,
observables and confidence so allow and deny paths (and every filter) are exercised.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas.agreement import Agreement, AgreementSet
from schemas.envelope import NormalizedObject
from schemas.org import load_registry
from schemas.tlp import TLP
from stixbus.core.decide import AgreementIndex, decide

REPO_ROOT = Path(__file__).resolve().parent.parent

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def synthetic_agreements(count: int, rng: random.Random) -> AgreementSet:
    parties = [
        "cert",
        "bank-a",
        "bank-b",
        "bank-c",
        "bank-assoc",
        "isp-one",
        "isp-two",
        "central-bank",
        "prosecution",
        "fiu",
        "sector:bank",
        "sector:isp",
    ]
    agreements = []
    for i in range(count):
        data: dict[str, Any] = {
            "id": f"bench-{i:02d}",
            "version": 1,
            "term": {"valid_from": "2026-01-01", "valid_until": "2029-01-01"},
            "purpose": {"code": "incident-response", "text": "bench"},
            "publishers": rng.sample([*parties[:7], "sector:bank", "sector:isp"], 2),
            "subscribers": rng.sample(parties, 3),
            "tlp_ceiling": rng.choice(["green", "amber", "amber+strict", "red"]),
            "object_types": rng.choice([["*"], ["indicator"], ["indicator", "sighting"]]),
            "observable_types": rng.choice([["*"], ["url", "domain-name", "ipv4-addr"]]),
            "labels": rng.choice(
                [
                    None,
                    {"mode": "any", "values": ["fraud", "phishing"]},
                    {"mode": "all", "values": ["fraud", "phishing"]},
                ]
            ),
            "min_confidence": rng.choice([None, 50, 70]),
            "attribution": rng.choice(["attributed", "pseudonymous", "anonymous"]),
            "onward_sharing": rng.random() < 0.5,
        }
        if TLP.parse(data["tlp_ceiling"]) >= TLP.AMBER_STRICT:
            data["onward_sharing"] = False
        agreements.append(Agreement.model_validate(data))
    return AgreementSet(agreements=tuple(agreements))


def synthetic_objects(
    count: int, publishers: list[str], rng: random.Random
) -> list[NormalizedObject]:
    objects = []
    for i in range(count):
        tlp = rng.choice(list(TLP))
        stix = {
            "type": rng.choice(["indicator", "indicator", "sighting", "report"]),
            "id": f"indicator--00000000-0000-4000-8000-{i:012d}",
            "object_marking_refs": [tlp.marking_id],
            "labels": rng.sample(["fraud", "phishing", "botnet", "spam"], rng.randint(0, 2)),
            "confidence": rng.choice([30, 60, 80, 95]),
        }
        objects.append(
            NormalizedObject(
                submission_id="bench",
                publisher=rng.choice(publishers),
                received_at=NOW,
                published_at=NOW,
                object_id=stix["id"],
                object_type=stix["type"],
                tlp=tlp,
                observable_types=rng.sample(["url", "domain-name", "ipv4-addr", "file"], 1),
                object=stix,
            )
        )
    return objects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="Measuring time per mode")
    args = parser.parse_args()
    rng = random.Random(5)
    registry = load_registry(REPO_ROOT / "deploy" / "orgs.yaml").with_pseudonym_key(
        bytes(range(32))
    )
    agreements = synthetic_agreements(20, rng)
    subscribers = list(registry.subscribers)
    assert len(subscribers) == 10
    publishers = [o.id for o in registry.publishers]
    objects = synthetic_objects(2000, publishers, rng)
    by_id = registry.by_id

    built = time.perf_counter()
    index = AgreementIndex(agreements, registry)
    build_ms = (time.perf_counter() - built) * 1000

    def run(route: Any, label: str) -> float:
        decisions = allowed = 0
        start = time.perf_counter()
        deadline = start + args.seconds
        while time.perf_counter() < deadline:
            for obj in objects:
                publisher = by_id[obj.publisher]
                for subscriber in subscribers:
                    allowed += route(obj, publisher, subscriber).allow
                decisions += len(subscribers)
        elapsed = time.perf_counter() - start
        rate = decisions / elapsed
        print(
            f"{label}: {rate:,.0f} decisions/s ({decisions:,} in {elapsed:.2f} s, "
            f"{allowed / decisions:.0%} allowed)"
        )
        return rate

    print(
        f"20 agreements x {len(subscribers)} subscribers, {len(objects)} objects; "
        f"index built in {build_ms:.2f} ms"
    )
    index_rate = run(lambda o, p, s: index.decide(o, p, s, NOW), "AgreementIndex.decide")
    run(lambda o, p, s: decide(o, p, s, agreements, NOW, registry), "decide() (cached index)")
    print(f"target >= 100,000/s: {'met' if index_rate >= 100_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
