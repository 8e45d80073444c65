"""TAXII 2.1 pull against the OASIS reference server (medallion, memory backend) on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from taxii2client.v21 import Collection

from connectors.base import SourceAuthError, SourceUnavailable
from connectors.taxii import TaxiiConfig
from tests.helpers.bus import Bus, free_port
from tests.helpers.connectors import (
    delivered_patterns,
    ingest_objects,
    receipts_for,
    run,
    sample_indicator,
)

COLLECTION = "91a7b528-80eb-42ed-a74d-c6fbd5a26116"


class Medallion:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        base = f"http://127.0.0.1:{self.port}"
        data = {
            "/discovery": {
                "title": "test",
                "description": "",
                "contact": "",
                "default": f"{base}/api1/",
                "api_roots": [f"{base}/api1/"],
            },
            "api1": {
                "information": {
                    "title": "api1",
                    "description": "",
                    "versions": ["application/taxii+json;version=2.1"],
                    "max_content_length": 9765625,
                },
                "status": [],
                "collections": [
                    {
                        "id": COLLECTION,
                        "title": "CERT indicators",
                        "description": "",
                        "can_read": True,
                        "can_write": True,
                        "media_types": ["application/stix+json;version=2.1"],
                        "objects": [],
                        "manifest": [],
                    }
                ],
            },
        }
        (tmp / "data.json").write_text(json.dumps(data))
        (tmp / "config.json").write_text(
            json.dumps(
                {
                    "backend": {
                        "module": "medallion.backends.memory_backend",
                        "module_class": "MemoryBackend",
                        "filename": str(tmp / "data.json"),
                    },
                    "users": {"cert": "s3cret"},
                    "taxii": {"max_page_size": 100},
                }
            )
        )
        script = Path(sys.executable).parent / "medallion"
        self.proc = subprocess.Popen(
            [
                str(script),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                str(tmp / "config.json"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "medallion.log").open("wb"),
        )
        self.url = f"{base}/api1/collections/{COLLECTION}/"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(f"{base}/taxii2/", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise AssertionError("medallion did not start")

    def seed(self, objects: list[dict[str, Any]]) -> None:
        """One POST per object, so each gets its own date_added."""
        collection = Collection(self.url, user="cert", password="s3cret")
        for obj in objects:
            collection.add_objects({"objects": [obj]}, wait_for_completion=False)
            time.sleep(0.002)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def medallion(tmp_path: Path) -> Iterator[Medallion]:
    server = Medallion(tmp_path)
    yield server
    server.stop()


def cfg(server: Medallion, tmp: Path, **kw: Any) -> TaxiiConfig:
    return TaxiiConfig.model_validate(
        {
            "name": "taxii-e2e",
            "org": "cert",
            "collections": [{"url": server.url}],
            "username": "cert",
            "password_env": "TEST_TAXII_PASSWORD",
            "page_size": 4,
            "state_file": str(tmp / "taxii-state.json"),
            "retry_attempts": 2,
            "retry_base_delay": 0.05,
            **kw,
        }
    )


def test_pull_paginates_persists_cursor_and_resumes(
    bus: Bus, medallion: Medallion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_TAXII_PASSWORD", "s3cret")
    medallion.seed([sample_indicator(i, "taxii-a") for i in range(10)])
    config = cfg(medallion, tmp_path)
    first = run(config, bus)
    assert first.read == 10 and first.published_objects == 10
    assert len(first.submissions) == 3  # pages of 4, 4, 2 via `next`
    receipts = receipts_for(bus, "cert", first.submissions)
    assert sum(r["accepted"] for r in receipts) == 10
    cursor = json.loads((tmp_path / "taxii-state.json").read_text())["cursors"][medallion.url]
    assert cursor.startswith("20")

    # restart: nothing new → nothing re-published
    assert run(config, bus).published_objects == 0
    # new objects after the cursor → only those
    medallion.seed([sample_indicator(i, "taxii-b") for i in range(3)])
    second = run(config, bus)
    assert second.published_objects == 3
    mine = [o for o in ingest_objects(bus, "cert") if "taxii-" in o.get("pattern", "")]
    assert len(mine) == len({o["id"] for o in mine}) == 13
    want = {"[url:value = 'http://taxii-a-0.example/login']"}
    assert delivered_patterns(bus, "bank-a", want) == want


def test_auth_error_fails_loudly(
    bus: Bus, medallion: Medallion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_TAXII_PASSWORD", "wrong")
    with pytest.raises(SourceAuthError, match="401"):
        run(cfg(medallion, tmp_path), bus)
    assert not (tmp_path / "taxii-state.json").exists()


def test_server_down_is_retried_then_reported(
    bus: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_TAXII_PASSWORD", "s3cret")
    config = TaxiiConfig.model_validate(
        {
            "name": "taxii-down",
            "org": "cert",
            "collections": [{"url": f"http://127.0.0.1:{free_port()}/api1/collections/x/"}],
            "username": "cert",
            "password_env": "TEST_TAXII_PASSWORD",
            "state_file": str(tmp_path / "s.json"),
            "retry_attempts": 2,
            "retry_base_delay": 0.05,
        }
    )
    with pytest.raises(SourceUnavailable, match="after 2 attempts"):
        run(config, bus)
