"""Two workers share the pipeline on the real broker: partitions split, every worker follows the
agreements, and a worker leaving (rebalance) loses nothing."""

from __future__ import annotations

import signal
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from stixbus.kafka.client import VersionFilter
from tests.helpers.bus import Bus, free_port, make_bus

GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"


def phishing(n: int, tag: str) -> bytes:
    obj = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": "2026-11-01T08:00:00.000Z",
        "modified": "2026-11-01T08:00:00.000Z",
        "name": "Phishing page",
        "pattern": f"[url:value = 'http://{tag}-{n}.multi.example/login']",
        "pattern_type": "stix",
        "valid_from": "2026-11-01T08:00:00Z",
        "labels": ["phishing"],
        "confidence": 80,
        "object_marking_refs": [GREEN],
    }
    return orjson.dumps(obj)


def second_worker(first: Bus, home: Path) -> Bus:
    env = {**first.env, "STIXBUS_WEB_PORT": str(free_port()), "STIXBUS_HOME": str(home)}
    return replace(first, home=home, env=env, proc=None)


def patterns_received(bus: Bus, org: str, expect: int, timeout: float = 90.0) -> set[str]:
    """Distinct indicator patterns on the org's topic, waiting until `expect` have arrived."""
    deadline = time.monotonic() + timeout
    while True:
        seen = VersionFilter()
        objects: list[dict[str, Any]] = [
            o for o in bus.objects(bus.names.deliver(org)) if seen.is_new(o)
        ]
        patterns = {o["pattern"] for o in objects if o["type"] == "indicator"}
        if len(patterns) >= expect or time.monotonic() > deadline:
            return patterns
        time.sleep(0.5)


def wait_for(bus: Bus, org: str, needle: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(needle in str(o.get("pattern")) for o in bus.objects(bus.names.deliver(org))):
            return
        time.sleep(0.5)
    raise AssertionError(f"{org} never received {needle}")


def versions(bus: Bus, org: str) -> set[tuple[str, str]]:
    return {
        (o["id"], o.get("modified", ""))
        for o in bus.objects(bus.names.deliver(org))
        if o["type"] == "indicator"
    }


def test_two_workers_split_the_work_and_survive_one_leaving(bootstrap: str, tmp_path: Path) -> None:
    (tmp_path / "w1").mkdir()
    (tmp_path / "w2").mkdir()
    first = make_bus(bootstrap, tmp_path / "w1", STIXBUS_PARTITIONS="4")
    second = second_worker(first, tmp_path / "w2")
    try:
        first.start()
        second.start()
        first.wait_ready()  # ready again after the rebalance the second worker caused
        batch_a = [phishing(n, "a") for n in range(20)]
        for payload in batch_a:
            first.publish("cert", payload)
        got = patterns_received(first, "bank-a", expect=20)
        assert len([p for p in got if "multi.example" in p and "//a-" in p]) == 20, sorted(got)

        first.stop(signal.SIGTERM)
        second.wait_ready()
        for n in range(20):
            second.publish("cert", phishing(n, "b"))
        got = patterns_received(second, "bank-a", expect=40)
        assert len([p for p in got if "//a-" in p]) == 20
        assert len([p for p in got if "//b-" in p]) == 20, "nothing lost across the rebalance"
        # Re-submitting the first batch unchanged after the rebalance delivers nothing new: the
        # surviving worker recovered the dedup state of the partitions it took over.
        versions_before = versions(second, "bank-a")
        marker = phishing(99, "c")
        for payload in [*batch_a, marker]:
            second.publish("cert", payload)
        wait_for(second, "bank-a", "//c-99.multi.example")
        after = versions(second, "bank-a")
        new = after - versions_before
        assert len(new) == 1, f"only the marker is new, got {len(new)} new versions"
    finally:
        first.stop(signal.SIGKILL)
        second.stop(signal.SIGKILL)
