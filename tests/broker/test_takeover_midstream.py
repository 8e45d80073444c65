"""A worker killed mid-stream: the survivor takes over its partitions and delivers everything.

Two workers in one group on the single test broker, a steady stream, kill -9 of one worker
five seconds in and no restart: once the dead member's session (10 s) is over, the survivor
owns every partition, and every submission must reach bank-a (the chaos variant of
tests/broker/test_cluster_failover.py stalled at this point, docs/runbook.md).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from stixbus.kafka.client import VersionFilter
from tests.broker.test_cluster_failover import (
    RATE,
    Stream,
    _deliveries,
    _diagnose,
    _wait_stable,
    two_workers,
)

STREAM_SECONDS = 16.0
KILL_AT = 5.0


def test_the_survivor_takes_over_mid_stream(bootstrap: str, tmp_path: Path) -> None:
    workers = two_workers(bootstrap, tmp_path)
    first, second = workers
    count = int(RATE * STREAM_SECONDS)
    stream = Stream(first, "t")
    try:
        for w in workers:
            w.launch()
        for w in workers:
            w.wait_ready()
        _wait_stable(bootstrap, first.env["STIXBUS_APP_ID"], len(workers))
        publisher = threading.Thread(target=stream.run, args=(count,), daemon=True)
        publisher.start()
        time.sleep(KILL_AT)
        second.stop(signal.SIGKILL)
        publisher.join(STREAM_SECONDS + 60)
        assert len(stream.acked) == count, f"acked {len(stream.acked)}/{count}: {stream.errors}"
        deadline = time.monotonic() + 120
        while True:
            seen = VersionFilter()
            arrived = {
                o["pattern"]
                for _, o in _deliveries(first, "bank-a")
                if o["type"] == "indicator" and seen.is_new(o)
            }
            if set(stream.acked) <= arrived or time.monotonic() > deadline:
                break
            time.sleep(1)
        lost = sorted(set(stream.acked) - arrived)
        diagnosis = _diagnose(first, [first], lost) if lost else ""
    finally:
        for w in workers:
            w.stop(signal.SIGKILL)
    assert not lost, f"{len(lost)} of {count} submissions lost, e.g. {lost[:3]}; {diagnosis}"
