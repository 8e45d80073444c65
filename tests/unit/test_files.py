"""stixbus/files.py: the one atomic writer."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stixbus.files import atomic_write


def test_atomic_write_replaces_with_owner_only_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    atomic_write(path, b"one")
    atomic_write(path, b"two", 0o640)
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    atomic_write(path, b"three")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tokens.yaml"
    atomic_write(path, b"old")
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, b"new")
    assert synced  # the data was fsync'ed before the rename was tried
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.yaml"]
