"""The ownership rule (stixbus/core/ownership.py): first publisher owns an id; nobody else may
version, revoke or rewrite it, and a minted id belongs to the bus."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.envelope import NormalizedObject
from schemas.tlp import TLP
from stixbus.core.dedup import content_hash
from stixbus.core.minting import minted_id
from stixbus.core.ownership import Ownership, Verdict, claim, minted_ids
from tests.helpers.paths import example_registry

NOW = datetime(2026, 11, 1, tzinfo=UTC)
ID = "indicator--6f1c8a53-9f5b-4d6e-8a3c-2b7e4f9d1a00"


def record(publisher: str, modified: str, **props: Any) -> NormalizedObject:
    obj = {"type": "indicator", "id": ID, "modified": modified, "name": "x", **props}
    return NormalizedObject(
        submission_id="s",
        publisher=publisher,
        received_at=NOW,
        published_at=NOW,
        object_id=ID,
        object_type="indicator",
        modified=modified,
        tlp=TLP.GREEN,
        object=obj,
    )


def run(held: Ownership | None, rec: NormalizedObject) -> tuple[Ownership | None, Verdict]:
    return claim(held, rec, content_hash(rec.object), bus_minted=False)


def test_first_publisher_owns_and_may_version() -> None:
    first = record("cert", "2026-11-01T00:00:00.000Z")
    held, verdict = run(None, first)
    assert verdict is Verdict.OWNED and held is not None and held.owner == "cert"
    newer, verdict = run(held, record("cert", "2026-11-02T00:00:00.000Z", revoked=True))
    assert verdict is Verdict.OWNED and newer is not None
    assert newer.owner == "cert" and newer.modified == "2026-11-02T00:00:00.000Z"


def test_another_org_cannot_revoke_replace_or_rewrite() -> None:
    held, _ = run(None, record("cert", "2026-11-01T00:00:00.000Z"))
    for attempt in (
        record("bank-a", "2026-11-02T00:00:00.000Z", revoked=True),
        record("bank-a", "2026-11-02T00:00:00.000Z", name="replaced"),
        record("bank-a", "2026-11-01T00:00:00.000Z", name="rewritten"),
        record("bank-a", "2026-10-01T00:00:00.000Z"),
    ):
        update, verdict = run(held, attempt)
        assert verdict is Verdict.FOREIGN and update is None


def test_identical_relay_by_another_org_is_an_echo() -> None:
    first = record("cert", "2026-11-01T00:00:00.000Z")
    held, _ = run(None, first)
    echo = record("bank-a", "2026-11-01T00:00:00.000Z")
    assert run(held, echo) == (None, Verdict.ECHO)


def test_owner_rewriting_a_version_is_a_conflict_across_submissions() -> None:
    held, _ = run(None, record("cert", "2026-11-01T00:00:00.000Z"))
    assert run(held, record("cert", "2026-11-01T00:00:00.000Z", name="other"))[1] is (
        Verdict.CONFLICT
    )
    assert run(held, record("cert", "2026-11-01T00:00:00.000Z")) == (None, Verdict.OWNED)


def test_precision_does_not_make_an_older_version_newer() -> None:
    held, _ = run(None, record("cert", "2026-11-01T00:00:00.5Z"))
    update, verdict = run(held, record("cert", "2026-11-01T00:00:00.123456Z"))
    assert verdict is Verdict.OWNED and update is None  # older: routed, dedup ignores it


def test_minted_ids_belong_to_the_bus() -> None:
    registry = example_registry()
    key = "2f0f5d8e-1c1a-5b7e-9f3d-000000000001"
    ids = minted_ids(registry, key)
    assert minted_id(registry, key, "bank-a") in ids
    assert len(ids) == len(registry.subscribers)
    assert minted_ids(registry, None) == frozenset()
    rec = record("bank-a", "2026-11-01T00:00:00.000Z")
    assert claim(None, rec, "d", bus_minted=True) == (None, Verdict.FOREIGN)


def test_table_value_round_trips() -> None:
    value = Ownership("cert", "2026-11-01T00:00:00.000Z", "abc")
    assert Ownership.decode(value.encode()) == value


def test_claim_step_says_what_to_write() -> None:
    from stixbus.core.ownership import claim_step, is_bus_minted

    registry = example_registry()
    first = record("cert", "2026-11-01T00:00:00.000Z")
    step = claim_step(None, first, registry)
    assert step.forward and step.update is not None and step.dead_letter is None
    held = step.update.encode()
    foreign = claim_step(held, record("bank-a", "2026-11-02T00:00:00.000Z", revoked=True), registry)
    assert not foreign.forward and foreign.foreign and foreign.receipt is None
    assert foreign.dead_letter is not None and foreign.dead_letter.reasons[0].reason == "foreign_id"
    conflict = claim_step(held, record("cert", "2026-11-01T00:00:00.000Z", name="y"), registry)
    assert not conflict.forward and conflict.receipt is not None
    assert conflict.receipt.rejections[0].reason == "version_conflict"
    key = "2f0f5d8e-1c1a-5b7e-9f3d-000000000001"
    assert is_bus_minted(registry, minted_id(registry, key, "bank-a"), key)
    assert not is_bus_minted(registry, ID, key)  # a v4 id: no hashing needed
