"""Shared helpers of the connector end-to-end tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from connectors.base import PullConfig, Report
from connectors.runner import run_once
from schemas.tlp import TLP
from stixbus.settings import Limits, Settings
from tests.helpers.bus import Bus


def settings_for(bus: Bus) -> Settings:
    return Settings(
        bootstrap_servers=bus.bootstrap,
        topic_prefix=bus.prefix,
        home=bus.home,
        limits=Limits(),
    )


def run(config: PullConfig, bus: Bus) -> Report:
    return asyncio.run(run_once(config, settings_for(bus)))


def receipts_for(
    bus: Bus, org: str, submissions: list[str], timeout: float = 60
) -> list[dict[str, Any]]:
    """The receipts of these submissions (waits until all arrived)."""
    wanted = set(submissions)
    deadline = time.monotonic() + timeout
    while True:
        found = {
            r["submission_id"]: r
            for r in bus.objects(bus.names.receipts(org), timeout=1)
            if r.get("submission_id") in wanted
        }
        if set(found) == wanted or time.monotonic() > deadline:
            assert set(found) == wanted, f"missing receipts: {wanted - set(found)}"
            return [found[s] for s in submissions]
        time.sleep(0.5)


def ingest_objects(bus: Bus, org: str) -> list[dict[str, Any]]:
    return [o for b in bus.objects(bus.names.ingest(org), timeout=1) for o in b["objects"]]


def delivered_patterns(
    bus: Bus, subscriber: str, patterns: set[str], timeout: float = 60
) -> set[str]:
    """Which of `patterns` reached `subscriber` (waits until one did, or timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        got = {
            o.get("pattern")
            for o in bus.objects(bus.names.deliver(subscriber), timeout=1)
            if o.get("type") == "indicator"
        }
        hit = {p for p in patterns if p in got}
        if hit or time.monotonic() > deadline:
            return hit
        time.sleep(1)


def state_path(bus: Bus, name: str) -> Path:
    return bus.home / "connectors" / f"{name}.json"


def sample_indicator(n: int, tag: str) -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid5(uuid.NAMESPACE_URL, f'{tag}-{n}')}",
        "created": "2026-11-01T08:00:00.000Z",
        "modified": "2026-11-01T08:00:00.000Z",
        "name": f"Phishing page {n}",
        "pattern": f"[url:value = 'http://{tag}-{n}.example/login']",
        "pattern_type": "stix",
        "valid_from": "2026-11-01T08:00:00.000Z",
        "indicator_types": ["malicious-activity"],
        "labels": ["phishing"],
        "confidence": 85,
        "object_marking_refs": [TLP.GREEN.marking_id],
    }
