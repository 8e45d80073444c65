"""Benchmark: the normalise fast path against the naive path (stix2.parse + stix2patterns).

Run: .venv/bin/python -m bench.normalise [--objects 20000] [--rounds 5]

Both paths see the same generated corpus (mixed url, domain, IPv4/IPv6, hashes; ~20% defanged
or upper-case variants; ~3% invalid objects) and must make the same accept/reject decision on
every object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from schemas.org import Org, Registry, load_registry
from stixbus.core.normalise import normalise_submission
from stixbus.settings import Limits

REPO_ROOT = Path(__file__).resolve().parent.parent

CREATED = "2024-03-01T10:00:00.000Z"


def _indicator(rng: random.Random, pattern: str, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.UUID(int=rng.getrandbits(128), version=4)}",
        "created": CREATED,
        "modified": CREATED,
        "name": "generated indicator",
        "indicator_types": ["malicious-activity"],
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2024-03-01T10:00:00Z",
    }
    obj.update(extra)
    return obj


def _label(rng: random.Random) -> str:
    return "".join(
        rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(4, 12))
    )


def _observable(rng: random.Random, variant: bool) -> str:
    kind = rng.choice(("url", "domain", "ipv4", "ipv6", "md5", "sha256"))
    domain = f"{_label(rng)}.{rng.choice(('com', 'net', 'org', 'example'))}"
    if kind == "url":
        url = f"http://{domain}/{_label(rng)}/{_label(rng)}.php?id={rng.randint(1, 9999)}"
        if variant:
            url = (
                url.replace("http://", "hxxp://")
                .replace(".", "[.]", 1)
                .upper()
                .replace("HXXP", "hxxp")
            )
        return f"[url:value = '{url}']"
    if kind == "domain":
        value = domain.replace(".", "[.]") if variant else domain
        return f"[domain-name:value = '{value.upper() if variant else value}']"
    if kind == "ipv4":
        value = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        return f"[ipv4-addr:value = '{value + '/32' if variant else value}']"
    if kind == "ipv6":
        value = f"2001:db8:{rng.randint(0, 0xFFFF):x}::{rng.randint(1, 0xFFFF):x}"
        return f"[ipv6-addr:value = '{value.upper() if variant else value}']"
    length = 32 if kind == "md5" else 64
    digest = f"{rng.getrandbits(length * 4):0{length}x}"
    name = "MD5" if kind == "md5" else "'SHA-256'"
    return f"[file:hashes.{name} = '{digest.upper() if variant else digest}']"


def _invalid(rng: random.Random) -> dict[str, Any]:
    """Objects both paths must reject."""
    choice = rng.randrange(4)
    good = _indicator(rng, _observable(rng, False))
    if choice == 0:
        good["pattern"] = good["pattern"].rstrip("]")  # unbalanced bracket
    elif choice == 1:
        good["valid_until"] = "2024-02-01T00:00:00Z"  # before valid_from
    elif choice == 2:
        del good["pattern"]
    else:
        good["id"] = "indicator--not-a-uuid"
    return good


def generate_corpus(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    corpus: list[dict[str, Any]] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.03:
            corpus.append(_invalid(rng))
        else:
            corpus.append(_indicator(rng, _observable(rng, variant=roll < 0.23)))
    return corpus


def bundles(corpus: list[dict[str, Any]], size: int) -> Iterator[bytes]:
    for start in range(0, len(corpus), size):
        yield orjson.dumps(
            {
                "type": "bundle",
                "id": f"bundle--{uuid.uuid4()}",
                "objects": corpus[start : start + size],
            }
        )


def fast_decisions(payloads: list[bytes], publisher: Org, registry: Registry) -> dict[str, bool]:
    limits = Limits()
    now = datetime.now(UTC)
    decisions: dict[str, bool] = {}
    for number, payload in enumerate(payloads):
        outcome = normalise_submission(
            payload, publisher, registry, limits,
            submission_id=f"bench-{number}", received_at=now, published_at=now,
        )  # fmt: skip
        decisions.update(dict.fromkeys(outcome.receipt.accepted_ids, True))
        for rejection in outcome.rejections:
            if rejection.object_id is not None:
                decisions.setdefault(rejection.object_id, False)
    return decisions


def naive_accepts(obj: dict[str, Any]) -> bool:
    """What a straightforward consumer does: stix2.parse, then the official pattern validator."""
    import stix2
    from stix2patterns.validator import validate as validate_pattern

    try:
        parsed = stix2.parse(json.dumps(obj), allow_custom=True)
    except Exception:
        return False
    if parsed.get("pattern_type") == "stix":
        return bool(validate_pattern(parsed["pattern"], stix_version="2.1"))
    return True


def naive_decisions(payloads: list[bytes]) -> dict[str, bool]:
    decisions: dict[str, bool] = {}
    for payload in payloads:
        for obj in json.loads(payload)["objects"]:
            decisions[str(obj.get("id"))] = naive_accepts(obj)
    return decisions


def _clear_caches() -> None:
    """Forget the canonical forms of this corpus: every run sees its values for the first time."""
    from stixbus.core.canonical import (
        canonical_domain,
        canonical_email,
        canonical_ip,
        canonical_url,
    )

    for cached in (canonical_domain, canonical_ip, canonical_url, canonical_email):
        cached.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--bundle-size", type=int, default=1000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="the fast path runs the whole corpus once a round, the naive path a 1/rounds share",
    )
    args = parser.parse_args()

    registry = load_registry(REPO_ROOT / "deploy" / "orgs.yaml").with_pseudonym_key(
        bytes(range(32))
    )
    publisher = registry.get("cert")
    corpus = generate_corpus(args.objects)
    payloads = list(bundles(corpus, args.bundle_size))

    fast_decisions(payloads[:1], publisher, registry)  # warm imports, not caches of this corpus
    naive_accepts(corpus[0])
    # The VM's speed drifts with its neighbours' load by tens of percent within seconds, so the
    # two paths are measured in interleaved rounds (same time windows): the fast path's rate is
    # the median over its rounds (each with cold caches), the naive path's is its total over the
    # whole corpus.  CPU seconds of this process: wall time would measure the neighbours.
    fast_rates: list[float] = []
    fast: dict[str, bool] = {}
    naive: dict[str, bool] = {}
    naive_seconds = 0.0
    share = -(-len(payloads) // args.rounds)
    for round_number in range(args.rounds):
        _clear_caches()
        start = time.process_time()
        fast = fast_decisions(payloads, publisher, registry)
        fast_rates.append(len(corpus) / (time.process_time() - start))
        start = time.process_time()
        naive.update(naive_decisions(payloads[round_number * share : (round_number + 1) * share]))
        naive_seconds += time.process_time() - start

    ids = [str(obj.get("id")) for obj in corpus]
    disagreements = [i for i in ids if fast.get(i) != naive.get(i)]
    fast_rate, naive_rate = statistics.median(fast_rates), len(naive) / naive_seconds
    print(f"objects:          {len(corpus)} in bundles of {args.bundle_size}")
    print(f"accepted (fast):  {sum(fast.get(i, False) for i in ids)}")
    print(
        f"fast path:        {fast_rate:,.0f} objects/s (median of {len(fast_rates)} runs; "
        f"{min(fast_rates):,.0f} - {max(fast_rates):,.0f})"
    )
    print(f"naive path:       {naive_rate:,.0f} objects/s ({naive_seconds:.2f} CPU s)")
    print(f"speed-up:         {fast_rate / naive_rate:.1f}x")
    print(f"disagreements:    {len(disagreements)}")
    for object_id in disagreements[:10]:
        print(f"  {object_id}: fast={fast.get(object_id)} naive={naive.get(object_id)}")
    print(f"load average:     {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
