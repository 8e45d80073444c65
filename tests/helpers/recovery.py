"""Crash-recovery helpers shared by tests/broker/test_recovery.py and bench/recovery.py: start a
worker without waiting, kill it like a crash, and follow a deliver topic from its end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from types import TracebackType

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from stixbus.kafka.client import publish
from tests.helpers.bus import Bus
from tests.helpers.paths import REPO_ROOT

GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
DOMAIN = "recovery.example"


def indicator(tag: str) -> bytes:
    """A TLP:GREEN phishing URL indicator as cert publishes it (bank-a receives it); the same
    tag gives the same object (id derived from it), so sending it twice is a duplicate."""
    return orjson.dumps(
        {
            "type": "indicator",
            "spec_version": "2.1",
            "id": f"indicator--{uuid.uuid5(uuid.NAMESPACE_URL, tag)}",
            "created": "2026-11-01T08:00:00.000Z",
            "modified": "2026-11-01T08:00:00.000Z",
            "name": "Phishing page",
            "pattern": f"[url:value = 'http://{tag}.{DOMAIN}/login']",
            "pattern_type": "stix",
            "valid_from": "2026-11-01T08:00:00Z",
            "labels": ["phishing"],
            "confidence": 80,
            "object_marking_refs": [GREEN],
        }
    )


async def send(bus: Bus, tag: str) -> None:
    await publish(bus.conn, bus.names.ingest("cert"), indicator(tag))


def spawn(bus: Bus) -> subprocess.Popen[bytes]:
    """Start a worker on the bus's home without waiting for it (what a supervisor does)."""
    log = (bus.home / "worker.log").open("ab")
    bus.proc = subprocess.Popen(
        [sys.executable, "-m", "stixbus.cli.main", "worker", "--loglevel", "warning"],
        env=bus.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    return bus.proc


def crash(proc: subprocess.Popen[bytes]) -> None:
    """kill -9 of the worker's whole process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class Follower:
    """Reads a deliver topic from its end at entry; `seen` maps each indicator pattern to the
    monotonic time it arrived."""

    def __init__(self, bus: Bus, topic: str) -> None:
        self.bus, self.topic = bus, topic
        self.seen: dict[str, float] = {}
        self.consumer = AIOKafkaConsumer(**bus.conn, enable_auto_commit=False)

    async def __aenter__(self) -> Follower:
        await self.consumer.start()
        await self.consumer._client.force_metadata_update()
        parts = self.consumer.partitions_for_topic(self.topic) or set()
        assert parts, f"topic {self.topic} has no partitions"
        self.consumer.assign([TopicPartition(self.topic, p) for p in sorted(parts)])
        await self.consumer.seek_to_end()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.consumer.stop()

    async def poll(self, timeout_ms: int = 200) -> None:
        batch = await self.consumer.getmany(timeout_ms=timeout_ms)
        now = time.monotonic()
        for messages in batch.values():
            for m in messages:
                obj = orjson.loads(m.value or b"{}")
                if isinstance(obj, dict) and obj.get("type") == "indicator":
                    self.seen.setdefault(str(obj.get("pattern")), now)

    def arrived(self, tag: str) -> float | None:
        needle = f"//{tag}.{DOMAIN}/"
        return next((at for pattern, at in self.seen.items() if needle in pattern), None)

    async def wait_for(self, tag: str, timeout: float) -> float | None:
        """When the indicator tagged `tag` arrived (monotonic), or None after `timeout`."""
        deadline = time.monotonic() + timeout
        while (at := self.arrived(tag)) is None and time.monotonic() < deadline:
            await self.poll()
        return at
