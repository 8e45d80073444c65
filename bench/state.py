"""Dedup state at scale on the real broker: changelog size, worker RSS, cold rebuild, restart.

Run (a broker must be up; plaintext): .venv/bin/python -m bench.state --keys 1000000
(`make bench-state` runs 1M and 10M keys).  Needs about 2.6 KB of broker disk and 0.6 KB of
local disk per key (10M keys: ~26 GB + ~6 GB).

1. state: `--keys` dedup states (one source, the 8 subscribers' views: what a key costs after a
   first report, bench/dedup.py's template with the key substituted) are written straight into
   the dedup table's changelog topic of a fresh bus with librdkafka (not through the pipeline:
   that would take hours at these counts).
2. cold rebuild: a worker with no local state starts (rocksdb store); time until /readyz is
   ready, i.e. every table partition restored from its changelog; changelog records/s; worker
   RSS when ready and 20 s later (the expiry index is rebuilt after the assignment); local disk.
3. warm restart: kill -9 and start again with the local state: time to ready, RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer

from bench.dedup import one_source_state
from stixbus.core.state_codec import encode_state
from stixbus.kafka.topics import DEDUP_TABLE, changelog_topic
from tests.helpers.bus import Bus, make_bus
from tests.helpers.recovery import crash, spawn

GIB = 1024**3
MIB = 1024**2


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(rest.split()[0]) * 1024
    return out


def disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def fill_changelog(bus: Bus, keys: int, partitions: int) -> tuple[float, int]:
    """Write `keys` states to the dedup changelog; (seconds, bytes of values)."""
    state = one_source_state()
    template, key = encode_state(state), state.key.encode()
    topic = changelog_topic(bus.env["STIXBUS_APP_ID"], DEDUP_TABLE)
    producer = Producer(
        {
            "bootstrap.servers": bus.bootstrap,
            "linger.ms": 50,
            "batch.size": 1 << 20,
            "queue.buffering.max.kbytes": 1 << 20,
            "queue.buffering.max.messages": 1_000_000,
            "acks": "all",
        }
    )
    started, total = time.perf_counter(), 0
    for n in range(keys):
        new_key = b"%08x" % n + key[8:]
        value = template.replace(key, new_key)
        total += len(value)
        while True:
            try:
                producer.produce(topic, value, new_key, partition=n % partitions)
                break
            except BufferError:
                producer.poll(0.05)
        if n % 10_000 == 0:
            producer.poll(0)
    producer.flush(600)
    return time.perf_counter() - started, total


async def drop_topics(bus: Bus) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bus.bootstrap)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(bus.prefix)]
        await admin.delete_topics(mine)
    finally:
        await admin.close()


def wait_ready(bus: Bus, timeout: float) -> float:
    started = time.monotonic()
    bus.wait_ready(timeout)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--keep", action="store_true", help="keep the worker home")
    args = parser.parse_args()
    bootstrap = os.environ.get("STIXBUS_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    home = Path(tempfile.mkdtemp(prefix="bench-state-"))
    env = {"STIXBUS_STORE": "rocksdb://", "STIXBUS_PARTITIONS": str(args.partitions)}
    bus = make_bus(bootstrap, home, **env)
    result: dict[str, object] = {"keys": args.keys, "partitions": args.partitions}
    print(f"{args.keys:,} keys, {args.partitions} partitions, broker {bootstrap}, home {home}")
    try:
        seconds, size = fill_changelog(bus, args.keys, args.partitions)
        result.update(fill_s=round(seconds, 1), changelog_value_bytes=size)
        print(f"  changelog written: {size / GIB:.2f} GiB of values in {seconds:.0f} s "
              f"({args.keys / seconds:,.0f} records/s)", flush=True)  # fmt: skip

        proc = spawn(bus)
        cold = wait_ready(bus, args.timeout)
        ready = status(proc.pid)
        time.sleep(20)
        later = status(proc.pid)
        tables = home / "worker"
        result.update(
            cold_rebuild_s=round(cold, 1),
            cold_records_per_s=round(args.keys / cold),
            rss_ready_mib=ready["VmRSS"] // MIB,
            rss_20s_mib=later["VmRSS"] // MIB,
            peak_rss_mib=later["VmHWM"] // MIB,
            local_disk_bytes=disk(tables),
        )
        print(f"  cold rebuild: ready after {cold:.1f} s ({args.keys / cold:,.0f} changelog "
              f"records/s); RSS {ready['VmRSS'] / MIB:,.0f} MiB when ready, "
              f"{later['VmRSS'] / MIB:,.0f} MiB 20 s later, peak {later['VmHWM'] / MIB:,.0f} "
              f"MiB; local state {disk(tables) / GIB:.2f} GiB", flush=True)  # fmt: skip

        crash(proc)
        proc = spawn(bus)
        warm = wait_ready(bus, args.timeout)
        time.sleep(20)
        warm_status = status(proc.pid)
        result.update(
            warm_restart_s=round(warm, 1),
            warm_rss_20s_mib=warm_status["VmRSS"] // MIB,
            warm_peak_rss_mib=warm_status["VmHWM"] // MIB,
        )
        print(f"  restart with local state after kill -9: ready after {warm:.1f} s; RSS 20 s "
              f"later {warm_status['VmRSS'] / MIB:,.0f} MiB, peak "
              f"{warm_status['VmHWM'] / MIB:,.0f} MiB", flush=True)  # fmt: skip
        crash(proc)
    finally:
        if bus.proc is not None:
            bus.stop(signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
            asyncio.run(drop_topics(bus))  # the changelog holds ~2.6 KB per key
    print(json.dumps(result))


if __name__ == "__main__":
    main()
