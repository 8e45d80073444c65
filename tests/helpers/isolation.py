"""The isolation scenario (issue 17): one org floods the bus with CPU-heavy submissions while
another sends plain indicators; how late are the second org's receipts, and does the worker's
health endpoint keep answering?  Used by tests/broker/test_isolation.py (CI size) and
bench/isolation.py (a longer run on demand)."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from schemas.envelope import SUBMISSION_HEADER
from stixbus.kafka.client import read_topic
from tests.helpers.bus import Bus

TS = "2026-11-01T08:00:00.000Z"


def _indicator(pattern: str) -> dict[str, Any]:
    return {"type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid4()}",
            "created": TS, "modified": TS, "pattern": pattern, "pattern_type": "stix",
            "valid_from": "2026-11-01T08:00:00Z"}  # fmt: skip


def _malware() -> dict[str, Any]:
    return {"type": "malware", "spec_version": "2.1", "id": f"malware--{uuid.uuid4()}",
            "created": TS, "modified": TS, "name": "Emotet", "is_family": True}  # fmt: skip


def _bundle(objects: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects})


def grammar_bundle(objects: int, first: int) -> bytes:
    """Indicators whose (distinct: nothing cached) patterns only the official grammar checks."""
    return _bundle(
        [
            _indicator(f"[process:pid = {n} AND process:name = 'p{n}']")
            for n in range(first, first + objects)
        ]
    )


def validator_bundle(objects: int) -> bytes:
    """Objects the fast path does not model: each goes through the OASIS validator."""
    return _bundle([_malware() for _ in range(objects)])


def plain_bundle() -> bytes:
    return _bundle([_indicator(f"[domain-name:value = 'x{uuid.uuid4().hex[:12]}.example']")])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


@dataclass
class Probe:
    """Latencies (s) and statuses of GETs on the worker's health endpoints, every `interval`."""

    url: str
    interval: float = 0.1
    seconds: dict[str, list[float]] = field(default_factory=lambda: {"/healthz": [], "/readyz": []})
    failures: dict[str, int] = field(default_factory=lambda: {"/healthz": 0, "/readyz": 0})
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            for path in self.seconds:
                start = time.monotonic()
                try:
                    with urllib.request.urlopen(self.url + path, timeout=10) as response:
                        response.read()
                        ok = response.status == 200
                except (OSError, urllib.error.URLError):
                    ok = False  # HTTPError (503) is a URLError: an answer, but not ready
                self.seconds[path].append(time.monotonic() - start)
                self.failures[path] += not ok
            self._stop.wait(self.interval)

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


@dataclass
class Report:
    light_seconds: list[float]  # the plain org's receipt delays (receipt time - send time)
    heavy_seconds: list[float]
    heavy_receipts: list[dict[str, Any]]
    probe: Probe
    heavy_sent: int

    def summary(self) -> str:
        light, health, ready = (
            self.light_seconds,
            self.probe.seconds["/healthz"],
            self.probe.seconds["/readyz"],
        )
        return (
            f"plain org receipts: {len(light)}, delay median {statistics.median(light):.2f}s, "
            f"max {max(light):.2f}s; heavy org receipts: {len(self.heavy_seconds)}/"
            f"{self.heavy_sent}, delay max {max(self.heavy_seconds, default=0):.1f}s; /healthz "
            f"{len(health)} probes, max {max(health):.3f}s, {self.probe.failures['/healthz']} "
            f"non-200; /readyz p95 {percentile(ready, 95):.3f}s, max {max(ready):.3f}s, "
            f"{self.probe.failures['/readyz']} non-200"
        )


async def _send(producer: AIOKafkaProducer, topic: str, submission_id: str, raw: bytes) -> int:
    metadata = await producer.send_and_wait(
        topic, raw, headers=[(SUBMISSION_HEADER, submission_id.encode())]
    )
    return int(metadata.timestamp)


async def _receipts(bus: Bus, org: str, expect: int, timeout: float) -> dict[str, tuple[int, Any]]:
    deadline = time.monotonic() + timeout
    found: dict[str, tuple[int, Any]] = {}
    while len(found) < expect and time.monotonic() < deadline:
        async for record in read_topic(
            bus.conn, bus.names.receipts(org), from_beginning=True, max_wait=3
        ):
            receipt = record.json()
            assert isinstance(receipt, dict)
            found[receipt["submission_id"]] = (record.timestamp_ms, receipt)
        await asyncio.sleep(0.5)
    return found


async def run_scenario(
    bus: Bus,
    *,
    heavy_org: str,
    light_org: str,
    heavy: list[bytes],
    light_count: int,
    light_interval: float,
    timeout: float,
) -> Report:
    """Send all of `heavy` from `heavy_org` at once, then `light_count` plain bundles from
    `light_org` every `light_interval` seconds, while probing /healthz and /readyz."""
    producer = AIOKafkaProducer(**bus.conn, acks="all", max_request_size=8 * 1024 * 1024)
    await producer.start()
    sent: dict[str, int] = {}
    with Probe(bus.web) as probe:
        try:
            for index, raw in enumerate(heavy):
                sent[f"heavy-{index}"] = await _send(
                    producer, bus.names.ingest(heavy_org), f"heavy-{index}", raw
                )
            for index in range(light_count):
                sent[f"light-{index}"] = await _send(
                    producer, bus.names.ingest(light_org), f"light-{index}", plain_bundle()
                )
                await asyncio.sleep(light_interval)
        finally:
            await producer.stop()
        light = await _receipts(bus, light_org, light_count, timeout)
        heavy_receipts = await _receipts(bus, heavy_org, len(heavy), timeout)
    return Report(
        light_seconds=[(light[k][0] - sent[k]) / 1000 for k in sorted(light)],
        heavy_seconds=[(heavy_receipts[k][0] - sent[k]) / 1000 for k in sorted(heavy_receipts)],
        heavy_receipts=[heavy_receipts[k][1] for k in sorted(heavy_receipts)],
        probe=probe,
        heavy_sent=len(heavy),
    )
