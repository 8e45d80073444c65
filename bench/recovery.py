"""Worker crash recovery on the real broker: kill -9 → first delivery, and a crash loop.

Run (a broker must be up, e.g. `make up` or deploy/kafka/kafka.sh up; plaintext here):
    .venv/bin/python -m bench.recovery [--restarts 5] [--store rocksdb://] [--no-static]
    .venv/bin/python -m bench.recovery --crash-loop 10 --duration 120

1. restarts: a worker on its own topic prefix (example registry and agreements) delivers one
   indicator; then, `--restarts` times: SIGKILL the worker, start a new one on the same home at
   once (what a supervisor does), publish a fresh indicator as cert at the moment of the kill,
   and time kill → that indicator on bank-a's deliver topic.  Prints each time and the median.
   `--no-static` runs the same without static group membership (the behaviour before).
2. crash loop: publishes one indicator every 0.2 s while the worker is killed every
   `--crash-loop` seconds after each start, for `--duration` seconds; then lets the last worker
   live and counts how many of the published indicators reached bank-a, and how many of the
   killed lives delivered anything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from tests.helpers.bus import Bus, make_bus
from tests.helpers.recovery import DOMAIN, Follower, crash, send, spawn

SUBSCRIBER = "bank-a"


async def restarts(bus: Bus, count: int, timeout: float) -> list[float]:
    proc = spawn(bus)
    bus.wait_ready()
    times: list[float] = []
    async with Follower(bus, bus.names.deliver(SUBSCRIBER)) as follower:
        await send(bus, "warmup")
        if await follower.wait_for("warmup", 60) is None:
            raise SystemExit(f"no first delivery:\n{bus.log_tail()}")
        for n in range(count):
            await asyncio.sleep(2.0)  # let the worker commit and settle
            killed_at = time.monotonic()
            crash(proc)
            proc = spawn(bus)
            tag = f"restart-{n}-{uuid.uuid4().hex[:6]}"
            await send(bus, tag)
            at = await follower.wait_for(tag, timeout)
            took = (at if at is not None else time.monotonic()) - killed_at
            times.append(took)
            print(f"  restart {n + 1}: kill -9 → first delivery {took:5.1f} s"
                  + ("" if at is not None else " (timed out)"), flush=True)  # fmt: skip
    crash(proc)
    return times


async def crash_loop(bus: Bus, every: float, duration: float) -> None:
    published: list[str] = []
    lives: list[tuple[float, float]] = []
    async with Follower(bus, bus.names.deliver(SUBSCRIBER)) as follower:

        async def feed(stop: asyncio.Event) -> None:
            n = 0
            while not stop.is_set():
                tag = f"loop-{n}-{uuid.uuid4().hex[:6]}"
                await send(bus, tag)
                published.append(tag)
                n += 1
                await asyncio.sleep(0.2)

        stop = asyncio.Event()
        feeder = asyncio.create_task(feed(stop))
        started = time.monotonic()
        while time.monotonic() - started < duration:
            proc = spawn(bus)
            born = time.monotonic()
            while time.monotonic() - born < every:
                await follower.poll()
            crash(proc)
            lives.append((born, time.monotonic()))
        stop.set()
        await feeder
        got: set[str] = set()
        proc = spawn(bus)  # the last life survives: everything must arrive eventually
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            await follower.poll()
            got = {t for t in published if any(f"//{t}.{DOMAIN}/" in p for p in follower.seen)}
            if len(got) == len(published):
                break
        crash(proc)
    got_at = [at for p, at in follower.seen.items() if DOMAIN in p]
    productive = sum(1 for born, died in lives if any(born <= at <= died for at in got_at))
    print(f"  {len(lives)} lives of {every:.0f} s: {productive} delivered something; "
          f"{len(got)} of {len(published)} published indicators reached {SUBSCRIBER} "
          "(after the last life)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--store", default="rocksdb://")
    parser.add_argument("--no-static", action="store_true", help="without static membership")
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--crash-loop", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--duration", type=float, default=120.0)
    args = parser.parse_args()
    bootstrap = os.environ.get("STIXBUS_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    home = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    env = {"STIXBUS_STORE": args.store, "STIXBUS_PARTITIONS": "4"}
    if args.no_static:
        env["STIXBUS_STATIC_MEMBERSHIP"] = "false"
    bus = make_bus(bootstrap, home, **env)
    mode = "without" if args.no_static else "with"
    print(f"worker on {bootstrap}, store {args.store}, {mode} static membership, home {home}")
    if args.crash_loop:
        asyncio.run(crash_loop(bus, args.crash_loop, args.duration))
        return
    times = asyncio.run(restarts(bus, args.restarts, args.timeout))
    print(f"kill -9 → first delivery: median {statistics.median(times):.1f} s "
          f"(min {min(times):.1f}, max {max(times):.1f}, {len(times)} restarts)")  # fmt: skip


if __name__ == "__main__":
    main()
