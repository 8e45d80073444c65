"""Replaying the agreements topic: versions in force, tombstones, bad records skipped."""

from __future__ import annotations

from stixbus.core.agreement_store import AgreementStore
from tests.helpers.agreements import make_agreement
from tests.helpers.paths import example_registry

REGISTRY = example_registry()


def record(agreement_id: str, version: int) -> tuple[bytes, bytes]:
    agreement = make_agreement(id=agreement_id, version=version)
    return agreement_id.encode(), agreement.model_dump_json().encode()


def test_batch_applies_versions_and_tombstones_and_reports_changes() -> None:
    store = AgreementStore(REGISTRY)
    changes = store.apply_batch([record("ag-a", 1), record("ag-b", 1), record("ag-a", 2)])
    assert changes == {"ag-a": 2, "ag-b": 1}
    assert {a.id: a.version for a in store.index.agreements} == {"ag-a": 2, "ag-b": 1}
    assert store.apply_batch([(b"ag-b", None), (b"never-there", None)]) == {"ag-b": None}
    assert [a.id for a in store.index.agreements] == ["ag-a"]


def test_bad_records_are_skipped_and_change_nothing() -> None:
    store = AgreementStore(REGISTRY)
    store.apply_batch([record("ag-a", 1)])
    index = store.index
    wrong_key = (b"other", record("ag-a", 5)[1])
    assert store.apply_batch([(b"ag-a", b"{not json"), wrong_key]) == {}
    assert store.index is index, "nothing changed: the index is not rebuilt"
    assert store.agreements["ag-a"].version == 1
