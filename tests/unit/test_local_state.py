"""Telling the worker's local table state from a reset broker (stixbus/kafka/local_state.py)
and reading Faust's persisted offsets (stixbus/kafka/_compat.py), without a broker."""

from __future__ import annotations

from pathlib import Path

from rocksdict import Options, Rdict

from stixbus.kafka._compat import FAUST_OFFSET_KEY, faust_persisted_offsets
from stixbus.kafka.local_state import judge

TOPIC = "stixbus-stixbus-dedup-changelog"


def test_offsets_within_the_changelog_are_fresh() -> None:
    verdict = judge({(TOPIC, 0): 41, (TOPIC, 1): 0}, {(TOPIC, 0): 42, (TOPIC, 1): 7}, {}, {})
    assert not verdict.stale


def test_offset_at_or_past_the_changelog_end_is_stale() -> None:
    # Faust's ConsistencyError condition: persisted offset > highwater (= end - 1).
    verdict = judge({(TOPIC, 0): 42}, {(TOPIC, 0): 42}, {}, {})
    assert verdict.stale and "ends at 42" in verdict.reason
    assert judge({(TOPIC, 1): 3}, {(TOPIC, 0): 9}, {}, {}).stale  # partition gone


def test_a_recreated_changelog_is_stale_even_when_it_has_grown_past_the_offset() -> None:
    # Offsets alone would pass (5 < 100): Faust would then skip the new topic's first records.
    verdict = judge({(TOPIC, 0): 5}, {(TOPIC, 0): 100}, {TOPIC: "old-id"}, {TOPIC: "new-id"})
    assert verdict.stale and "created again" in verdict.reason
    assert not judge({(TOPIC, 0): 5}, {(TOPIC, 0): 100}, {TOPIC: "same"}, {TOPIC: "same"}).stale


def test_an_unreadable_store_is_stale() -> None:
    verdict = judge({}, {}, {}, {}, {"stixbus-dedup-0.db": "Corruption: bad magic"})
    assert verdict.stale and "cannot be opened" in verdict.reason


def test_persisted_offsets_read_from_faust_layout(tmp_path: Path) -> None:
    db = Rdict(str(tmp_path / "stixbus-dedup-3.db"), options=Options(raw_mode=True))
    db[FAUST_OFFSET_KEY] = b"1234"
    db[b"some-key"] = b"state"
    db.close()
    empty = Rdict(str(tmp_path / "stixbus-owners-0.db"), options=Options(raw_mode=True))
    empty.close()
    broken = tmp_path / "stixbus-owners-1.db"
    broken.mkdir()
    (broken / "CURRENT").write_text("MANIFEST-000099\n")  # names a manifest that is not there
    offsets, unreadable = faust_persisted_offsets(tmp_path)
    assert offsets == {("stixbus-dedup", 3): 1234}
    assert list(unreadable) == ["stixbus-owners-1.db"]
    assert faust_persisted_offsets(tmp_path / "missing") == ({}, {})
