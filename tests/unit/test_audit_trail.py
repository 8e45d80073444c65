"""The folded audit trail (stixbus/core/audit.py) and companion memory (core/companions.py).

Every delivery of a route step is listed by that step's one audit entry, with the sources and
publishers it rests on; replaying the step gives the same audit id, so `stixbus audit verify`
(check_audit) counts it once; a delivery no entry lists, or that two entries list, is a gap.
"""

from __future__ import annotations

from datetime import timedelta

from schemas.audit import AuditEntry
from stixbus.core.audit import check_audit, deliveries_of
from stixbus.core.companions import CompanionMemory
from stixbus.core.route_step import Tick, route_step
from tests.helpers.dedup_samples import indicator, version
from tests.unit.test_route_step import CERT_RECIPIENTS, CONFIG, GRACE, INDEX, REGISTRY, T0, Table
from tests.unit.test_route_step import record as normalized


def delivered(entry: AuditEntry) -> set[tuple[str, str, str | None]]:
    return {(d.subscriber, d.object_id, d.modified) for d in deliveries_of(entry)}


def test_every_delivery_of_a_step_is_in_its_one_audit_entry_with_its_sources() -> None:
    table = Table()
    cert = normalized("cert", indicator())
    step = table.step(cert)
    entry = step.audit_entry
    assert entry is not None and entry.object_id == cert.object_id and entry.publisher == "cert"
    assert delivered(entry) == {
        (d.subscriber, d.stix_object["id"], d.stix_object["modified"]) for d in step.deliveries
    }
    assert {d.subscriber for d in deliveries_of(entry)} == CERT_RECIPIENTS
    for d in deliveries_of(entry):
        assert [(s.publisher, s.object_id) for s in d.sources] == [("cert", cert.object_id)]
    assert {r.subscriber for r in entry.decisions} == {o.id for o in REGISTRY.subscribers}
    assert AuditEntry.model_validate_json(entry.model_dump_json()) == entry


def test_a_replayed_step_has_the_same_audit_id_and_another_version_another() -> None:
    obj = indicator()
    first, replay = Table(), Table()
    a = first.step(normalized("cert", obj), T0)
    b = replay.step(normalized("cert", obj), T0 + timedelta(seconds=30))  # wall clock differs
    assert a.audit_entry is not None and b.audit_entry is not None
    assert a.audit_entry.audit_id == b.audit_entry.audit_id
    newer = first.step(normalized("cert", version(obj, "2026-05-02T00:00:00.000Z", revoked=True)))
    assert newer.audit_entry is not None and newer.audit_entry.audit_id != a.audit_entry.audit_id


def test_revocations_from_an_expiry_tick_are_audited() -> None:
    table = Table()
    table.step(normalized("cert", indicator(valid_until="2026-06-02T00:00:00Z")))
    expired = table.step(Tick(), T0 + timedelta(days=2))
    entry = expired.audit_entry
    assert expired.deliveries and entry is not None and entry.object_id is None
    assert entry.decisions == []
    assert all(d.revocation for d in deliveries_of(entry))
    assert len(deliveries_of(entry)) == len(expired.deliveries)


def test_nothing_decided_nothing_delivered_no_entry() -> None:
    assert route_step(Tick(), None, REGISTRY, INDEX, T0, CONFIG, GRACE).audit_entry is None


def test_check_audit_finds_missing_and_duplicated_and_counts_replays_once() -> None:
    table = Table()
    entry = table.step(normalized("cert", indicator())).audit_entry
    assert entry is not None
    on_topic = sorted(delivered(entry))
    # a replay: the same deliveries twice on the topic and the same entry twice
    ok = check_audit(on_topic + on_topic, [entry, entry])
    assert ok.complete and ok.delivered == len(on_topic) and ok.audited_only == 0
    lost = ("bank-a", "indicator--00000000-0000-5000-8000-000000000000", "2026-05-01T00:00:00.000Z")
    gap = check_audit([*on_topic, lost], [entry])
    assert not gap.complete and gap.missing == [lost] and gap.duplicated == []
    twice = entry.model_copy(update={"audit_id": "another"})
    dup = check_audit(on_topic, [entry, twice])
    assert not dup.complete and dup.duplicated == sorted(on_topic)
    assert check_audit(on_topic[1:], [entry]).audited_only == 1


def test_companions_go_once_again_on_change_and_after_the_refresh() -> None:
    memory = CompanionMemory(refresh_seconds=100)
    identity = {"type": "identity", "id": "identity--1", "name": "bus"}
    assert memory.due("bank-a", identity, 0) is not None
    assert memory.due("bank-a", identity, 1) is None
    assert memory.due("bank-b", identity, 1) is not None  # per subscriber
    assert memory.due("bank-a", {**identity, "name": "renamed"}, 2) is not None
    assert memory.due("bank-a", {**identity, "name": "renamed"}, 50) is None
    assert memory.due("bank-a", {**identity, "name": "renamed"}, 103) is not None
    memory.forget()
    assert memory.due("bank-b", identity, 104) is not None
