"""Marking-definitions are remembered across submissions and restarts, per publisher (issue 12,
finding 7), on the real broker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from schemas.tlp import TLP
from tests.helpers.bus import make_bus
from tests.helpers.stix_samples import bundle, indicator

STATEMENT: dict[str, Any] = {
    "type": "marking-definition",
    "spec_version": "2.1",
    "id": "marking-definition--fa42a846-8d90-4e51-bc29-71d5b4802168",
    "created": "2017-06-01T00:00:00.000Z",
    "definition_type": "statement",
    "definition": {"statement": "Copyright 2015-2026, The MITRE Corporation."},
}


def receipt(bus: Any, org: str, submission: str, timeout: float = 40) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in bus.objects(bus.names.receipts(org)):
            if r["submission_id"] == submission:
                return dict(r)
        time.sleep(0.5)
    raise AssertionError(f"no receipt for {submission}")


def test_markings_survive_submissions_and_restarts_per_publisher(
    bootstrap: str, tmp_path: Path
) -> None:
    bus = make_bus(bootstrap, tmp_path)
    bus.start()
    try:
        first = bus.publish("cert", bundle(STATEMENT))
        assert receipt(bus, "cert", first)["accepted"] == 1
        refs = [TLP.GREEN.marking_id, STATEMENT["id"]]
        later = bus.publish("cert", bundle(indicator(object_marking_refs=refs)))
        got = receipt(bus, "cert", later)
        assert got["rejected"] == 0, got["rejections"]
        assert any("reach no subscriber" in w for w in got["warnings"])
        # Another member cannot lean on (or probe) the CERT's markings.
        probe = bus.publish("bank-a", bundle(indicator(object_marking_refs=refs)))
        assert [r["reason"] for r in receipt(bus, "bank-a", probe)["rejections"]] == [
            "unknown_marking"
        ]
        bus.stop()
        bus.start()
        after = bus.publish("cert", bundle(indicator(object_marking_refs=refs)))
        assert receipt(bus, "cert", after)["rejected"] == 0
    finally:
        bus.stop()
