"""The route stage's pure step (stixbus/core/route_step.py): one test per branch.

Every step here goes through the table encoding between events, as the route agent does, and
every audit record it returns is checked against the `schemas.audit.AuditRecord` contract.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from schemas.agreement import AgreementSet, load_agreements
from schemas.audit import AuditRecord
from schemas.envelope import NormalizedObject, Reason
from stixbus.core.decide import AgreementIndex
from stixbus.core.dedup import KeyState, MergeOutcome
from stixbus.core.deliveries import RouteConfig
from stixbus.core.minting import minted_id
from stixbus.core.normalise import normalise_submission
from stixbus.core.route_step import StepResult, TableWrite, Tick, route_step
from stixbus.core.state_codec import decode_state, encode_state
from stixbus.settings import Limits
from tests.helpers.dedup_samples import indicator, version
from tests.helpers.paths import REPO_ROOT, example_registry

REGISTRY = example_registry()
INDEX = AgreementIndex(load_agreements(REPO_ROOT / "deploy" / "agreements.yaml"), REGISTRY)
CONFIG = RouteConfig()
GRACE = 60.0
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
# Who the example agreements give a CERT indicator (tests/unit/test_dedup_core.py).
CERT_RECIPIENTS = {
    "bank-a", "bank-b", "bank-c", "isp-one", "isp-two", "central-bank", "prosecution", "fiu",
}  # fmt: skip


def record(org: str, obj: dict[str, Any], at: datetime = T0) -> NormalizedObject:
    outcome = normalise_submission(
        orjson.dumps(obj), REGISTRY.get(org), REGISTRY, Limits(),
        submission_id=str(uuid.uuid4()), received_at=at, published_at=at,
    )  # fmt: skip
    assert outcome.rejections == [], outcome.rejections
    (accepted,) = outcome.accepted
    return accepted


class Table:
    """The route agent's table for one key: encoded bytes, applied as the agent applies a step."""

    def __init__(self, index: AgreementIndex = INDEX) -> None:
        self.raw: bytes | None = None
        self.index = index

    @property
    def state(self) -> KeyState | None:
        return decode_state(self.raw) if self.raw else None

    def step(self, event: NormalizedObject | Tick, at: datetime = T0) -> StepResult:
        result = route_step(event, self.state, REGISTRY, self.index, at, CONFIG, GRACE)
        for entry in result.audit:  # the contract the audit topic carries
            assert AuditRecord.model_validate_json(entry.model_dump_json()) == entry
        if result.table is TableWrite.PUT:
            assert result.state is not None
            self.raw = encode_state(result.state)
        elif result.table is TableWrite.DELETE:
            assert result.state is None
            self.raw = None
        return result


def by_subscriber(result: StepResult) -> dict[str, dict[str, Any]]:
    objects = {d.subscriber: d.stix_object for d in result.deliveries}
    assert len(objects) == len(result.deliveries), "two deliveries to one subscriber"
    return objects


def test_new_source_is_minted_for_each_allowed_subscriber_and_every_decision_audited() -> None:
    table, obj = Table(), indicator()
    rec = record("cert", obj)
    result = table.step(rec)
    assert result.outcome is MergeOutcome.NEW_SOURCE and not result.suppressed
    assert result.table is TableWrite.PUT and result.quarantine is None
    # open-ended indicator: the only tick due is the ISP blocking agreement's max_age (P30D)
    assert result.deadline == T0 + timedelta(days=30)
    delivered = by_subscriber(result)
    assert set(delivered) == CERT_RECIPIENTS
    for subscriber, stix in delivered.items():
        assert stix["id"] == minted_id(REGISTRY, rec.key, subscriber)
    # one decision per subscriber of the registry, allowed or not, about the producer's object
    assert {a.subscriber for a in result.audit} == {o.id for o in REGISTRY.subscribers}
    assert len(result.audit) == len(REGISTRY.subscribers)
    for entry in result.audit:
        assert entry.object_id == obj["id"] and entry.publisher == "cert"
        assert entry.decided_at == T0
        assert entry.delivered is (entry.subscriber in CERT_RECIPIENTS)
        assert entry.allow is (entry.agreement_id is not None)
        assert entry.reasons, entry
        if not entry.allow:
            assert all(r.code != "allowed" for r in entry.reasons)
    assert table.state is not None and set(table.state.views) == CERT_RECIPIENTS


def test_identical_resubmission_is_suppressed_and_refreshes_last_seen() -> None:
    table, obj = Table(), indicator()
    table.step(record("cert", obj))
    later = T0 + timedelta(hours=2)
    result = table.step(record("cert", obj, later), later)
    assert result.outcome is MergeOutcome.IDENTICAL and result.suppressed
    assert result.table is TableWrite.PUT  # only last_seen changes
    assert result.deliveries == [] and result.audit == [] and result.quarantine is None
    assert table.state is not None
    assert table.state.sources[obj["id"]].last_seen == later
    assert table.state.sources[obj["id"]].first_seen == T0


def test_stale_version_is_suppressed_and_leaves_the_table() -> None:
    table, obj = Table(), indicator()
    table.step(record("cert", obj))
    before = table.raw
    older = version(obj, "2026-04-15T00:00:00.000Z")
    result = table.step(record("cert", older))
    assert result.outcome is MergeOutcome.STALE and result.suppressed
    assert result.table is TableWrite.KEEP and result.state is None
    assert result.deliveries == [] and result.audit == []
    assert table.raw == before


def test_version_conflict_is_quarantined_not_routed() -> None:
    table, obj = Table(), indicator()
    table.step(record("cert", obj))
    before = table.raw
    rewritten = {**obj, "name": "Something else"}  # same (id, modified), other content
    result = table.step(record("cert", rewritten))
    assert result.outcome is MergeOutcome.CONFLICT and not result.suppressed
    assert result.table is TableWrite.KEEP and result.deliveries == [] and result.audit == []
    assert result.quarantine is not None
    receipt, letter = result.quarantine.receipt, result.quarantine.dead_letter
    assert receipt.publisher == "cert" and receipt.accepted == 0 and receipt.rejected == 1
    assert [r.reason for r in receipt.rejections] == [Reason.VERSION_CONFLICT]
    assert letter.source_topic == "quarantine"
    assert orjson.loads(letter.payload)["name"] == "Something else"
    assert table.raw == before


def test_new_version_delivers_only_on_a_material_change_but_is_always_audited() -> None:
    table, obj = Table(), indicator()
    first = by_subscriber(table.step(record("cert", obj)))
    minor = table.step(record("cert", version(obj, "2026-05-02T00:00:00.000Z", confidence=85)))
    assert minor.outcome is MergeOutcome.NEW_VERSION and minor.table is TableWrite.PUT
    assert minor.deliveries == []  # below the confidence step
    assert len(minor.audit) == len(REGISTRY.subscribers)
    assert not any(a.delivered for a in minor.audit)
    major = table.step(record("cert", version(obj, "2026-05-03T00:00:00.000Z", confidence=95)))
    again = by_subscriber(major)
    assert set(again) == CERT_RECIPIENTS
    for subscriber, stix in again.items():
        assert stix["id"] == first[subscriber]["id"] and stix["confidence"] == 95
        assert stix["modified"] > first[subscriber]["modified"]
    assert {a.subscriber for a in major.audit if a.delivered} == CERT_RECIPIENTS


def test_revocation_reaches_every_recipient_and_is_final() -> None:
    table, obj = Table(), indicator()
    table.step(record("cert", obj))
    revoked = table.step(record("cert", version(obj, "2026-05-02T00:00:00.000Z", revoked=True)))
    assert revoked.outcome is MergeOutcome.NEW_VERSION
    assert {d.subscriber for d in revoked.deliveries} == CERT_RECIPIENTS
    assert all(d.revocation and d.stix_object["revoked"] is True for d in revoked.deliveries)
    after = table.step(record("cert", version(obj, "2026-05-03T00:00:00.000Z")))
    assert after.outcome is MergeOutcome.AFTER_REVOCATION and after.suppressed
    assert after.table is TableWrite.KEEP and after.deliveries == []


def test_tick_without_state_does_nothing() -> None:
    result = Table().step(Tick())
    assert result == StepResult(TableWrite.KEEP)
    assert not result.suppressed and result.outcome is None


def test_tick_after_expiry_revokes_then_settles_then_collects() -> None:
    table = Table()
    arrived = table.step(record("cert", indicator(valid_until="2026-06-02T00:00:00Z")))
    expires = datetime(2026, 6, 2, tzinfo=UTC)
    assert arrived.deadline == expires
    early = table.step(Tick(), T0 + timedelta(hours=1))  # nothing due yet
    assert early.deliveries == [] and early.audit == [] and early.table is TableWrite.PUT
    later = expires + timedelta(seconds=5)
    expired = table.step(Tick(), later)
    assert expired.outcome is None and not expired.suppressed
    assert {d.subscriber for d in expired.deliveries} == CERT_RECIPIENTS
    for delivery in expired.deliveries:
        assert delivery.revocation and delivery.stix_object["revoked"] is True
        assert delivery.stix_object["modified"] == "2026-06-02T00:00:00.000Z"
    assert expired.audit == []  # a tick decides nothing new about any object
    assert expired.table is TableWrite.PUT
    assert table.state is not None and table.state.settled_at == later
    collectable_at = later + timedelta(seconds=GRACE)  # (just after it, to the microsecond)
    assert expired.deadline is not None
    assert collectable_at < expired.deadline <= collectable_at + timedelta(milliseconds=1)
    kept = table.step(Tick(), later + timedelta(seconds=GRACE / 2))
    assert kept.table is TableWrite.PUT and kept.deliveries == []
    gone = table.step(Tick(), later + timedelta(seconds=GRACE + 1))
    assert gone.table is TableWrite.DELETE and gone.state is None and table.raw is None


def test_no_agreement_denies_everyone_and_audits_why() -> None:
    table = Table(AgreementIndex(AgreementSet(agreements=()), REGISTRY))
    result = table.step(record("cert", indicator()))
    assert result.outcome is MergeOutcome.NEW_SOURCE and result.deliveries == []
    assert len(result.audit) == len(REGISTRY.subscribers)
    for entry in result.audit:
        assert not entry.allow and not entry.delivered and entry.agreement_id is None
        assert entry.reasons and all(r.code != "allowed" for r in entry.reasons)


def test_audit_record_contract_refuses_what_the_reader_cannot_use() -> None:
    table = Table()
    (entry, *_) = table.step(record("cert", indicator())).audit
    data = orjson.loads(entry.model_dump_json())
    # what `stixbus agreements audit` reads back
    assert datetime.fromisoformat(data["decided_at"]) == T0
    assert set(data) >= {"allow", "subscriber", "object_id", "reasons", "decided_at", "delivered"}
    for broken in (
        {**data, "allow": "perhaps"},
        {**data, "decided_at": "yesterday"},
        {**data, "unexpected": 1},
        {k: v for k, v in data.items() if k != "delivered"},
        {**data, "reasons": [{"code": "allowed"}]},
    ):
        with pytest.raises(ValidationError):
            AuditRecord.model_validate(broken)
