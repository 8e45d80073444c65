"""MISP feed end to end: feed dir → misp-stix → ingest → receipt → bank delivery; updates."""

from __future__ import annotations

import shutil
from pathlib import Path

from connectors.misp import MispConfig
from schemas.tlp import TLP
from tests.helpers.bus import Bus
from tests.helpers.connectors import delivered_patterns, ingest_objects, receipts_for, run
from tests.helpers.paths import FIXTURES

EVENT1 = "6c3a9e10-0000-4000-8000-000000000001"


def test_feed_publishes_new_and_changed_events_only(bus: Bus, tmp_path: Path) -> None:
    feed = tmp_path / "feed"
    shutil.copytree(FIXTURES / "misp_feed", feed)
    # a malformed event must be reported, not block the others, and be retried next run
    bad = "6c3a9e10-0000-4000-8000-0000000000ff"
    (feed / f"{bad}.json").write_text('{"Event": {"uuid": "not-a-uuid", "info": 3')
    manifest = (feed / "manifest.json").read_text()
    (feed / "manifest.json").write_text(
        manifest.rstrip().rstrip("}") + f', "{bad}": {{"timestamp": "1"}}}}'
    )
    config = MispConfig(
        name="misp-e2e",
        org="cert",
        source=str(feed),
        confidence=80,
        include_types=["indicator"],
        state_file=tmp_path / "misp-state.json",
    )
    first = run(config, bus)
    assert first.read == 3
    assert [r.pointer for r in first.rejections] == [f"/events/{bad}"]
    receipts = receipts_for(bus, "cert", first.submissions)
    assert sum(r["accepted"] for r in receipts) == first.published_objects == 7
    assert all(r["rejected"] == 0 for r in receipts), receipts
    published = ingest_objects(bus, "cert")
    by_pattern = {o["pattern"]: o for o in published}
    phish = by_pattern["[url:value = 'http://login-alphabank.example/verify']"]
    assert phish["object_marking_refs"] == [TLP.AMBER.marking_id]
    assert "phishing" in phish["labels"]
    red = by_pattern["[url:value = 'https://pay-secure-check.example/login']"]
    assert red["object_marking_refs"] == [TLP.RED.marking_id]
    want = {phish["pattern"]}
    assert delivered_patterns(bus, "bank-a", want) == want

    again = run(config, bus)  # unchanged feed: only the broken event is tried again
    assert again.published_objects == 0 and len(again.rejections) == 1

    # event 1 updated (new attribute, new timestamp): only the new indicator is sent
    shutil.copy(FIXTURES / "misp_feed_update" / f"{EVENT1}.json", feed / f"{EVENT1}.json")
    updated = (FIXTURES / "misp_feed_update" / "manifest.json").read_text()
    (feed / "manifest.json").write_text(updated)
    third = run(config, bus)
    assert third.read == 1 and third.published_objects == 1
    [receipt] = receipts_for(bus, "cert", third.submissions)
    assert receipt["accepted"] == 1
    versions = [(o["id"], o["modified"]) for o in ingest_objects(bus, "cert")]
    assert len(versions) == len(set(versions)) == 8
