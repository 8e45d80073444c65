"""Blocklist connector end to end on the real broker: list → ingest → receipt → bank delivery."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from connectors import runner
from connectors.base import ConnectorError, SourceUnavailable
from connectors.blocklist import BlocklistConfig
from stixbus.kafka.client import Published, publish
from tests.helpers.bus import Bus
from tests.helpers.connectors import (
    delivered_patterns,
    ingest_objects,
    receipts_for,
    run,
    settings_for,
)
from tests.helpers.paths import FIXTURES as REPO_FIXTURES

FIXTURES = REPO_FIXTURES / "blocklists"


def config(tmp: Path, name: str, **kw: Any) -> BlocklistConfig:
    source = tmp / "urlhaus.csv"
    if not source.exists():
        shutil.copy(FIXTURES / "urlhaus.csv", source)
    return BlocklistConfig.model_validate(
        {
            "name": name,
            "org": "cert",
            "preset": "urlhaus",
            "source": str(source),
            "labels": ["phishing", "malicious-activity"],
            "tlp": "green",
            "confidence": 80,
            "state_file": str(tmp / "state.json"),
            **kw,
        }
    )


def test_urlhaus_list_reaches_a_bank_and_rereads_publish_nothing(bus: Bus, tmp_path: Path) -> None:
    cfg = config(tmp_path, "urlhaus-e2e")
    first = run(cfg, bus)
    assert first.published_objects == 4
    assert [r.pointer for r in first.rejections] == ["/line/11", "/line/12"]
    [receipt] = receipts_for(bus, "cert", first.submissions)
    assert receipt["accepted"] == 4 and receipt["rejected"] == 0, receipt
    want = {"[url:value = 'http://login-alphabank.example/secure/update.php']"}
    assert delivered_patterns(bus, "bank-a", want) == want

    again = run(cfg, bus)  # same list: no new objects, no new versions
    assert again.published_objects == 0 and again.submissions == []
    assert again.unchanged == 4

    # one line vanishes → one revocation (same id, newer modified, revoked)
    source = Path(cfg.source)
    source.write_text(
        "\n".join(line for line in source.read_text().splitlines() if "cdn-update" not in line)
    )
    third = run(cfg, bus)
    assert third.revoked == 1 and third.published_objects == 1
    [receipt] = receipts_for(bus, "cert", third.submissions)
    assert receipt["accepted"] == 1, receipt
    objects = ingest_objects(bus, "cert")
    revoked = [o for o in objects if o.get("revoked")]
    assert len(revoked) == 1
    original = [o for o in objects if o["id"] == revoked[0]["id"] and not o.get("revoked")]
    assert original and original[0]["created"] == revoked[0]["created"]
    assert revoked[0]["modified"] > original[0]["modified"]
    ids = [(o["id"], o["modified"]) for o in objects]
    assert len(ids) == len(set(ids)) == 5  # nothing duplicated


def test_restart_mid_import_neither_loses_nor_duplicates(bus: Bus, tmp_path: Path) -> None:
    lines = [f"http://phish-{i}.example/login" for i in range(1200)]
    (tmp_path / "big.txt").write_text("\n".join(lines) + "\n")
    cfg = BlocklistConfig.model_validate(
        {
            "name": "restart-e2e",
            "org": "cert",
            "source": str(tmp_path / "big.txt"),
            "type": "url",
            "labels": ["phishing"],
            "tlp": "green",
            "state_file": str(tmp_path / "state.json"),
            "max_submission_bytes": 100_000,
        }
    )
    settings = settings_for(bus)
    calls = 0

    async def crashing(
        conn: dict[str, Any], topic: str, payload: bytes, sid: str | None
    ) -> Published:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectorError("simulated crash")
        return await publish(conn, topic, payload, sid)

    original = runner.Submitter.__init__

    def patched(self: Any, *a: Any, **kw: Any) -> None:
        original(self, *a, **kw)
        self._publish = crashing

    mp = pytest.MonkeyPatch()
    mp.setattr(runner.Submitter, "__init__", patched)
    try:
        with pytest.raises(ConnectorError, match="simulated crash"):
            asyncio.run(runner.run_once(cfg, settings))
    finally:
        mp.undo()
    resumed = run(cfg, bus)
    assert resumed.published_objects > 0
    objects = [o for o in ingest_objects(bus, "cert") if "phish-" in o.get("pattern", "")]
    ids = [o["id"] for o in objects]
    assert len(ids) == len(set(ids)) == 1200
    assert run(cfg, bus).published_objects == 0  # and a duplicate import adds nothing


def test_source_down_fails_loudly_and_keeps_state(bus: Bus, tmp_path: Path) -> None:
    cfg = config(tmp_path, "down-e2e", source=str(tmp_path / "missing.csv"))
    with pytest.raises(SourceUnavailable, match=r"missing\.csv"):
        run(cfg, bus)
    assert not (tmp_path / "state.json").exists()
    result = bus.cli(
        "connector", "run", "blocklist", "--config", str(tmp_path / "nope.yaml"), "--once"
    )
    assert result.returncode == 1
    assert "nope.yaml" in result.stderr.decode() and "Traceback" not in result.stderr.decode()


def test_cli_run_once_prints_report(bus: Bus, tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "ips.txt", tmp_path / "ips.txt")
    cfg = tmp_path / "ips.yaml"
    cfg.write_text(
        f"name: ips-cli\norg: cert\npreset: ip-list\nsource: {tmp_path / 'ips.txt'}\n"
        f"tlp: green\nstate_file: {tmp_path / 'ips-state.json'}\n"
    )
    report = tmp_path / "report.json"
    result = bus.cli(
        "connector", "run", "blocklist", "--config", str(cfg), "--once", "--report", str(report)
    )
    assert result.returncode == 2, result.stderr.decode()  # ran; two bad lines
    text = result.stdout.decode()
    assert "/line/6" in text and "999.1.1.1" in text
    assert '"published_objects": 4' in report.read_text()
