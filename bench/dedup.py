"""De-duplication: merge core throughput, state size for many keys, recovery time.

Run: .venv/bin/python -m bench.dedup [--keys 1000000] [--replay 50000] [--no-kafka]

1. merge core: merge_source + plan_key per accepted record (cert and bank-a publishing the same
   URLs, the example agreements, 10 subscribers), with and without the JSON round trip of the
   state that the route agent does per event.
2. state: `--keys` distinct keys written to a rocksdict.Rdict as KeyState JSON (what the worker's
   rocksdb store holds: one source, views of the 8 subscribers that got it); RSS and disk, then
   the same extrapolated to 10M keys.
3. recovery: reopening the store (what a restarted worker does with its local rocksdb),
   rebuilding the expiry index from it (what the route timer does after a rebalance), and
   replaying a changelog topic of `--replay` state records with aiokafka into a fresh Rdict
   (what a worker without local state does); extrapolated to 10M keys.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from rocksdict import Rdict

from schemas.agreement import load_agreements
from schemas.envelope import NormalizedObject
from schemas.org import load_registry
from stixbus.core.decide import AgreementIndex
from stixbus.core.dedup import KeyState, merge_source
from stixbus.core.deliveries import plan_key
from stixbus.core.expiry import ExpiryIndex
from stixbus.core.normalise import normalise_submission
from stixbus.core.state_codec import deadline_header, decode_state, encode_state
from stixbus.settings import Limits

REPO_ROOT = Path(__file__).resolve().parent.parent

REGISTRY = load_registry(REPO_ROOT / "deploy" / "orgs.yaml").with_pseudonym_key(bytes(range(32)))
INDEX = AgreementIndex(load_agreements(REPO_ROOT / "deploy" / "agreements.yaml"), REGISTRY)
T0 = datetime(2026, 6, 1, tzinfo=UTC)
GIB = 1024**3


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def records(org: str, count: int, tag: str) -> list[NormalizedObject]:
    objects = [
        {
            "type": "indicator",
            "spec_version": "2.1",
            "id": f"indicator--{uuid.uuid4()}",
            "created": "2026-05-01T00:00:00.000Z",
            "modified": "2026-05-01T00:00:00.000Z",
            "name": "Phishing page",
            "pattern": f"[url:value = 'http://bench-{tag}-{n}.example/login']",
            "pattern_type": "stix",
            "valid_from": "2026-05-01T00:00:00Z",
            "valid_until": "2026-09-01T00:00:00Z",
            "labels": ["phishing"],
            "confidence": 80,
        }
        for n in range(count)
    ]
    bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}
    out = normalise_submission(
        orjson.dumps(bundle),
        REGISTRY.get(org),
        REGISTRY,
        Limits(),
        submission_id=str(uuid.uuid4()),
        received_at=T0,
        published_at=T0,
    )
    assert not out.rejections, out.rejections[:3]
    return out.accepted


def bench_core(keys: int) -> KeyState:
    cert, bank = records("cert", keys, "core"), records("bank-a", keys, "core")
    stream = [r for pair in zip(cert, bank, strict=True) for r in pair]
    results: dict[str, float] = {}
    sample: KeyState | None = None
    for label, roundtrip in (("merge_source + plan_key", False), ("... + state JSON", True)):
        states: dict[str, bytes | KeyState] = {}
        deliveries = 0
        started, cpu = time.perf_counter(), time.process_time()
        for n, rec in enumerate(stream):
            now = T0 + timedelta(milliseconds=n)
            held = states.get(rec.key)
            if isinstance(held, bytes):
                held = decode_state(held)
            state, _ = merge_source(held, rec, now)
            plan = plan_key(state, rec.object_id, REGISTRY, INDEX, now)
            deliveries += len(plan.deliveries)
            states[rec.key] = encode_state(plan.state) if roundtrip else plan.state
            sample = plan.state
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        results[label] = len(stream) / elapsed
        print(f"  {label:28s} {len(stream) / elapsed:10,.0f} records/s wall, "
              f"{len(stream) / cpu:,.0f} per CPU second "
              f"({deliveries / len(stream):.1f} deliveries per record)")  # fmt: skip
    assert sample is not None
    return sample


def one_source_state() -> KeyState:
    (rec,) = records("cert", 1, "state")
    state, _ = merge_source(None, rec, T0)
    return plan_key(state, rec.object_id, REGISTRY, INDEX, T0).state


def bench_state(keys: int, folder: Path) -> tuple[Path, bytes]:
    state = one_source_state()
    template = encode_state(state)
    key = state.key.encode()
    print(f"  one key's state: {len(template):,} bytes JSON ({len(state.views)} views)")
    path = folder / "dedup.db"
    db = Rdict(str(path))
    base_rss = rss()
    started = time.perf_counter()
    for n in range(keys):
        new_key = b"%08x" % n + key[8:]
        db[new_key] = template.replace(key, new_key)
    db.flush()
    write_s = time.perf_counter() - started
    db.close()
    size = disk(path)
    after = rss()
    print(f"  wrote {keys:,} keys in {write_s:.1f} s ({keys / write_s:,.0f} keys/s)")
    print(f"  disk {size / GIB:.2f} GiB ({size / keys:,.0f} B/key) → 10M keys ≈ "
          f"{size / keys * 10_000_000 / GIB:.1f} GiB")  # fmt: skip
    print(f"  RSS {after / 2**20:,.0f} MiB (process before the store: {base_rss / 2**20:,.0f} "
          f"MiB; peak {peak_rss() / 2**20:,.0f} MiB)")  # fmt: skip
    return path, key


def bench_reopen(path: Path, keys: int, key: bytes) -> None:
    started = time.perf_counter()
    db = Rdict(str(path))
    opened = time.perf_counter() - started
    started = time.perf_counter()
    for n in range(0, keys, max(1, keys // 10_000)):
        decode_state(db[b"%08x" % n + key[8:]] or b"")
    lookups = time.perf_counter() - started
    print(f"  reopen the local store: {opened * 1000:.0f} ms; 10,000 random gets+parse: "
          f"{lookups:.2f} s; RSS {rss() / 2**20:,.0f} MiB")  # fmt: skip
    started = time.perf_counter()
    count = 0
    for _, raw in db.items():
        count += 1
        assert deadline_header(raw) is not None
    scan = time.perf_counter() - started
    print(f"  expiry index rebuild (full scan reading each value's deadline header): "
          f"{count:,} keys in {scan:.1f} s ({count / scan:,.0f} keys/s)")  # fmt: skip
    index = ExpiryIndex()
    started = time.perf_counter()
    index.begin_rebuild(T0)  # all within its 1-day horizon: the worst case
    index.rebuilt((b"%08x" % n, T0 + timedelta(seconds=n % 86_400)) for n in range(count))
    index.end_rebuild()
    fill = time.perf_counter() - started
    started = time.perf_counter()
    due = index.pop_due(T0 + timedelta(seconds=60))
    pop = time.perf_counter() - started
    print(f"  expiry index: {count:,} deadlines loaded in {fill:.1f} s, RSS {rss() / 2**20:,.0f} "
          f"MiB; popping the {len(due):,} due ones: {pop * 1000:.0f} ms")  # fmt: skip
    db.close()


async def bench_replay(count: int, value: bytes, folder: Path) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from stixbus.kafka.admin import ensure_topics
    from stixbus.kafka.topics import TopicSpec
    from stixbus.settings import get_settings

    conn = {"bootstrap_servers": get_settings().bootstrap_servers}
    topic = f"bench-dedup-changelog-{uuid.uuid4().hex[:8]}"
    await ensure_topics(conn, [TopicSpec(topic, 1, compacted=True)])
    producer = AIOKafkaProducer(**conn, linger_ms=20, max_batch_size=1 << 20)  # fmt: skip
    await producer.start()
    try:
        for n in range(count):
            await producer.send(topic, value, key=b"%08x" % n)
        await producer.flush()
    finally:
        await producer.stop()
    db = Rdict(str(folder / "replay.db"))
    consumer = AIOKafkaConsumer(**conn, enable_auto_commit=False, fetch_max_bytes=64 << 20,
                                max_partition_fetch_bytes=64 << 20)  # fmt: skip
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        started, seen = time.perf_counter(), 0
        while seen < count:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
            for message in batch.get(tp, []):
                db[message.key] = message.value
                seen += 1
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
        db.close()
    rate = count / elapsed
    print(f"  changelog replay: {count:,} records in {elapsed:.1f} s ({rate:,.0f} keys/s) → "
          f"10M keys ≈ {10_000_000 / rate:,.0f} s on one partition, "
          f"{10_000_000 / rate / 4:,.0f} s with 4 partitions on 4 cores")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core-keys", type=int, default=2_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--replay", type=int, default=50_000)
    parser.add_argument("--no-kafka", action="store_true")
    args = parser.parse_args()
    print(f"merge core ({args.core_keys:,} keys x 2 producers):")
    bench_core(args.core_keys)
    folder = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    try:
        print(f"state ({args.keys:,} keys, rocksdict):")
        path, key = bench_state(args.keys, folder)
        print("recovery:")
        bench_reopen(path, args.keys, key)
        if not args.no_kafka:
            value = encode_state(one_source_state())
            asyncio.run(bench_replay(args.replay, value, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"peak RSS of this process: {peak_rss() / 2**20:,.0f} MiB (pid {os.getpid()})")


if __name__ == "__main__":
    main()
