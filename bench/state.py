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
   RSS when ready and 20 s after the expiry index was rebuilt (after the assignment; it holds
   the keys due within its horizon, `--due-fraction` of them, 10 % by default); local disk.
3. warm restart: kill -9 and start again with the local state: time to ready, RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Producer

from bench.dedup import one_source_state
from stixbus.core.state_codec import decode_state, encode_state
from stixbus.kafka.topics import DEDUP_TABLE, changelog_topic
from tests.helpers.bus import Bus, make_bus
from tests.helpers.paths import REPO_ROOT

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


def templates(due_fraction: float) -> tuple[bytes, list[bytes], bytes]:
    """The live state (valid until 2027: outside the expiry horizon), states due within the
    next day (1-23 h from now: inside the default 1-day horizon, none due while measuring), and
    the template's key."""
    state = one_source_state()
    # valid a year longer (2027): live indicators, none due for an expiry tick while measuring
    dated = encode_state(state).replace(b"2026-09-01T", b"2027-09-01T")
    template = encode_state(decode_state(dated.replace(b"2026-07-01T", b"2027-07-01T")))
    now = datetime.now(UTC)
    soon = [
        encode_state(decode_state(dated.replace(b"2026-07-01T00:00:00", at.encode())))
        for at in ((now + timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%S") for h in range(1, 24))
    ]
    return template, soon if due_fraction > 0 else [], state.key.encode()


def fill_changelog(
    bus: Bus, keys: int, partitions: int, due_fraction: float = 0.0
) -> tuple[float, int]:
    """Write `keys` states to the dedup changelog, `due_fraction` of them due within the next
    day (spread over its hours); (seconds, bytes of values)."""
    template, soon, key = templates(due_fraction)
    every = round(1 / due_fraction) if due_fraction > 0 else 0  # every n-th key is due soon
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
        due = every and n % every == 0
        value = (soon[(n // every) % len(soon)] if due else template).replace(key, new_key)
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


def spawn(bus: Bus, root: Path) -> subprocess.Popen[bytes]:
    """A worker from the checkout `root` (--worker-root: e.g. a baseline), without waiting."""
    log = (bus.home / "worker.log").open("ab")
    bus.proc = subprocess.Popen(
        [sys.executable, "-m", "stixbus.cli.main", "worker", "--loglevel", "warning"],
        env={**bus.env, "PYTHONPATH": str(root)},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
        start_new_session=True,
    )
    return bus.proc


def crash(proc: subprocess.Popen[bytes]) -> None:
    """kill -9 of the worker's whole process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def gauge(bus: Bus, name: str) -> int:
    """One of the worker's gauges, -1 if not up yet (or no such gauge: an older worker)."""
    try:
        with urllib.request.urlopen(f"{bus.web}/metrics", timeout=5) as response:
            body = response.read().decode()
    except OSError:
        return -1
    for line in body.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return -1


def wait_indexed(bus: Bus, keys: int, timeout: float) -> float:
    """Seconds until the expiry index was rebuilt: stixbus_dedup_keys counts every key (before
    the horizon, the index's size: it held every key)."""
    started = time.monotonic()
    while gauge(bus, "stixbus_dedup_keys") < keys:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the expiry index did not count {keys} keys in {timeout} s")
        time.sleep(1)
    return time.monotonic() - started


def wait_ready(bus: Bus, timeout: float) -> float:
    started = time.monotonic()
    bus.wait_ready(timeout)
    return time.monotonic() - started


def warm_restart(bus: Bus, args: argparse.Namespace, result: dict[str, object]) -> None:
    """kill -9 is done: start again with the local state."""
    proc = spawn(bus, args.worker_root)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--keep", action="store_true", help="keep the worker home")
    parser.add_argument(
        "--worker-root", type=Path, default=REPO_ROOT,
        help="run the worker from this checkout (e.g. `git archive <base> | tar -x -C DIR`)",
    )  # fmt: skip
    parser.add_argument("--profile", help="py-spy raw profile of the cold rebuild to this file")
    parser.add_argument(
        "--profile-index", help="py-spy raw profile from ready until the index is rebuilt"
    )
    parser.add_argument("--no-warm", action="store_true", help="skip the warm restart")
    parser.add_argument(
        "--due-fraction", type=float, default=0.1,
        help="this fraction of the keys is due within the next day (the expiry index holds them)",
    )  # fmt: skip
    args = parser.parse_args()
    bootstrap = os.environ.get("STIXBUS_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    home = Path(tempfile.mkdtemp(prefix="bench-state-"))
    env = {"STIXBUS_STORE": "rocksdb://", "STIXBUS_PARTITIONS": str(args.partitions)}
    bus = make_bus(bootstrap, home, **env)
    result: dict[str, object] = {
        "keys": args.keys, "partitions": args.partitions, "due_fraction": args.due_fraction,
        "worker_root": str(args.worker_root),
    }  # fmt: skip
    print(f"{args.keys:,} keys ({args.due_fraction:.0%} due within a day), {args.partitions} "
          f"partitions, broker {bootstrap}, worker {args.worker_root}, home {home}")  # fmt: skip
    try:
        seconds, size = fill_changelog(bus, args.keys, args.partitions, args.due_fraction)
        result.update(fill_s=round(seconds, 1), changelog_value_bytes=size)
        print(f"  changelog written: {size / GIB:.2f} GiB of values in {seconds:.0f} s "
              f"({args.keys / seconds:,.0f} records/s)", flush=True)  # fmt: skip

        proc = spawn(bus, args.worker_root)
        profiler = None
        if args.profile:
            time.sleep(0.5)
            profiler = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--subprocesses",
                 "--format", "raw", "-r", "50", "-p", str(proc.pid), "-o", args.profile],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        cold = wait_ready(bus, args.timeout)
        ready = status(proc.pid)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
        for line in (home / "worker.log").read_text(errors="replace").splitlines():
            if "restored" in line:
                print("  worker:", line.strip()[-200:], flush=True)
        index_profiler = None
        if args.profile_index:
            index_profiler = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw",
                 "-r", "50", "-p", str(proc.pid), "-o", args.profile_index],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        indexed = wait_indexed(bus, args.keys, args.timeout)
        if index_profiler is not None:
            index_profiler.send_signal(signal.SIGINT)
            index_profiler.wait(60)
        time.sleep(20)
        later = status(proc.pid)
        held = gauge(bus, "stixbus_expiry_index_keys")  # -1: a worker without the horizon
        tables = home / "worker"
        result.update(
            cold_rebuild_s=round(cold, 1),
            cold_records_per_s=round(args.keys / cold),
            rss_ready_mib=ready["VmRSS"] // MIB,
            index_rebuilt_after_ready_s=round(indexed, 1),
            rss_indexed_20s_mib=later["VmRSS"] // MIB,
            expiry_index_keys=held,
            peak_rss_mib=later["VmHWM"] // MIB,
            local_disk_bytes=disk(tables),
        )
        print(f"  cold rebuild: ready after {cold:.1f} s ({args.keys / cold:,.0f} changelog "
              f"records/s); RSS {ready['VmRSS'] / MIB:,.0f} MiB when ready; expiry index "
              f"rebuilt {indexed:.0f} s later (holding "
              f"{'every' if held < 0 else f'{held:,}'} key(s)), RSS "
              f"{later['VmRSS'] / MIB:,.0f} MiB 20 s "
              f"after that, peak {later['VmHWM'] / MIB:,.0f} "
              f"MiB; local state {disk(tables) / GIB:.2f} GiB", flush=True)  # fmt: skip

        crash(proc)
        if not args.no_warm:
            warm_restart(bus, args, result)
    finally:
        if bus.proc is not None:
            bus.stop(signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
            asyncio.run(drop_topics(bus))  # the changelog holds ~2.6 KB per key
    print(json.dumps(result))


if __name__ == "__main__":
    main()
