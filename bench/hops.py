"""Where the latency goes: publish→delivery split per hop of the pipeline, from the Kafka
timestamps of the records each stage wrote (producer create time).

Run after a latency run that kept its bus (a broker must be up):
    .venv/bin/python -m bench.e2e --rate 50 --duration 20 --keep
    .venv/bin/python -m bench.hops <prefix of the kept bus>   # e.g. bench8aaff43c

For every `lat<N>-<hex>` name of the latency feed, the first record that mentions it on each
stage topic (ingest → claims → normalized → deliver.<subscriber>), then p50/p95 of the time
between consecutive stages.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import statistics
from typing import Any

from stixbus.kafka.client import read_topic
from stixbus.kafka.config import client_kwargs
from stixbus.settings import load_settings

LATENCY_NAME = re.compile(rb"lat\d+-[0-9a-f]{6}")


async def first_seen(conn: dict[str, Any], topic: str) -> dict[bytes, int]:
    """name -> timestamp (ms) of the first record of `topic` that mentions it."""
    seen: dict[bytes, int] = {}
    async for record in read_topic(conn, topic, from_beginning=True):
        for name in set(LATENCY_NAME.findall(record.value)):
            seen[name] = min(record.timestamp_ms, seen.get(name, record.timestamp_ms))
    return seen


async def main(prefix: str, subscriber: str) -> None:
    conn = client_kwargs(load_settings())
    stages = ["ingest.cert", "claims", "normalized", f"deliver.{subscriber}"]
    seen = {stage: await first_seen(conn, f"{prefix}.{stage}") for stage in stages}
    for before, after in itertools.pairwise(stages):
        waits = sorted(seen[after][n] - seen[before][n] for n in seen[before] if n in seen[after])
        if waits:
            p95 = waits[max(0, int(0.95 * len(waits)) - 1)]
            print(f"{before:>15} -> {after:<20} n={len(waits):6,d}  "
                  f"p50 {statistics.median(waits):7.1f} ms  p95 {p95:7.1f} ms")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", help="topic prefix of a bus kept by `bench.e2e --keep`")
    parser.add_argument("--subscriber", default="bank-a")
    args = parser.parse_args()
    asyncio.run(main(args.prefix, args.subscriber))
