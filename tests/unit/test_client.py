"""The bus's own consumer drops redelivered versions, also across its own restarts."""

from __future__ import annotations

from pathlib import Path

from stixbus.kafka.client import VersionFilter


def version(object_id: str, modified: str) -> dict[str, str]:
    return {"type": "indicator", "id": object_id, "modified": modified}


def test_drops_a_redelivered_version_but_not_a_new_one() -> None:
    seen = VersionFilter()
    assert seen.is_new(version("indicator--1", "2026-11-01T00:00:00.000Z"))
    assert not seen.is_new(version("indicator--1", "2026-11-01T00:00:00.000Z"))
    assert seen.is_new(version("indicator--1", "2026-11-02T00:00:00.000Z"))
    assert seen.is_new(version("indicator--2", "2026-11-01T00:00:00.000Z"))


def test_seen_file_carries_the_drop_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "seen"
    first = VersionFilter(path)
    assert first.is_new(version("indicator--1", "2026-11-01T00:00:00.000Z"))
    restarted = VersionFilter(path)
    assert not restarted.is_new(version("indicator--1", "2026-11-01T00:00:00.000Z"))
    assert restarted.is_new(version("indicator--1", "2026-11-03T00:00:00.000Z"))
    assert len(path.read_text().splitlines()) == 2
