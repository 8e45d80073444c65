"""Sightings and false-positive reports (stixbus/core/feedback.py, core/fp_policy.py, the audit's
delivered ids): the pure steps the feedback agents and the route stage run."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from stix2validator import ValidationOptions, validate_instance

from schemas.agreement import AgreementSet
from schemas.envelope import NormalizedObject, Reason
from schemas.feedback import Contribution, DeliveryFact, FeedbackEvent, FeedbackReport, ReportKind
from stixbus.core.audit import delivery_facts
from stixbus.core.decide import AgreementIndex
from stixbus.core.deliveries import RouteConfig
from stixbus.core.feedback import (
    MAX_REPORTS_PER_REPORTER,
    NOT_DELIVERED_MESSAGE,
    DeliveredIndex,
    FlushSchedule,
    ForwardedDeliveries,
    KeyFeedback,
    accept_report,
    apply_deliveries,
    apply_delivery,
    batch_deliveries,
    contribute,
    deliveries_by_id,
    due_at,
    flush,
    flush_interval,
    reports_of,
    split_feedback,
)
from stixbus.core.minting import minted_id
from stixbus.core.normalise import normalise_submission
from stixbus.core.route_step import StepResult, TableWrite, Tick, route_step
from stixbus.core.state_codec import decode_state, encode_state
from stixbus.kafka.fast_producer import key_partition
from stixbus.settings import Limits
from tests.helpers.agreements import make_agreement
from tests.helpers.dedup_samples import indicator
from tests.helpers.paths import example_registry

REGISTRY = example_registry()
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BANKS = ("bank-a", "bank-b", "bank-c")
ISPS = ("isp-one", "isp-two")
AGREEMENTS = AgreementSet(
    agreements=(
        make_agreement(
            id="cert-banks", subscribers=["sector:bank"], attribution="anonymous",
            false_positive={"threshold": 2, "action": "lower_confidence", "confidence": 15},
        ),
        make_agreement(
            id="cert-isps", subscribers=["sector:isp"], attribution="attributed",
            false_positive={"threshold": 2, "action": "withhold"},
        ),
        make_agreement(id="cert-regulator", subscribers=["central-bank"]),
    )
)  # fmt: skip
INDEX = AgreementIndex(AgreementSet.model_validate(AGREEMENTS.model_dump()), REGISTRY)


def stix_errors(obj: dict[str, Any]) -> list[str]:
    result = validate_instance(obj, ValidationOptions(version="2.1"))
    return [str(e) for e in result.errors]


def record(org: str, obj: dict[str, Any], at: datetime = T0) -> NormalizedObject:
    outcome = normalise_submission(
        orjson.dumps(obj), REGISTRY.get(org), REGISTRY, Limits(),
        submission_id=str(uuid.uuid4()), received_at=at, published_at=at,
    )  # fmt: skip
    assert outcome.rejections == [], outcome.rejections
    (accepted,) = outcome.accepted
    return accepted


def sighting(target: str, count: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "type": "sighting", "spec_version": "2.1", "id": f"sighting--{uuid.uuid4()}",
        "created": "2026-06-01T10:00:00.000Z", "modified": "2026-06-01T10:00:00.000Z",
        "sighting_of_ref": target, "count": count,
        "first_seen": "2026-06-01T09:00:00Z", "last_seen": "2026-06-01T09:30:00Z", **extra,
    }  # fmt: skip


def opinion(targets: list[str], value: str = "strongly-disagree", **extra: Any) -> dict[str, Any]:
    return {
        "type": "opinion", "spec_version": "2.1", "id": f"opinion--{uuid.uuid4()}",
        "created": "2026-06-01T10:00:00.000Z", "modified": "2026-06-01T10:00:00.000Z",
        "opinion": value, "object_refs": targets, **extra,
    }  # fmt: skip


class Route:
    """The route stage for one key, table encoding in between, with a false-positive count."""

    def __init__(self) -> None:
        self.raw: bytes | None = None
        self.counts: dict[str, int] = {}

    def step(self, event: NormalizedObject | Tick, at: datetime = T0) -> StepResult:
        state = decode_state(self.raw) if self.raw else None
        config = RouteConfig(false_positives=self.counts)
        result = route_step(event, state, REGISTRY, INDEX, at, config, 60.0)
        if result.table is TableWrite.PUT:
            assert result.state is not None
            self.raw = encode_state(result.state)
        return result


def delivered_facts(result: StepResult) -> dict[str, DeliveryFact]:
    facts = delivery_facts(result.audit_entry) if result.audit_entry is not None else []
    return {f.subscriber: f for f in facts}


# --- the audit says what was delivered ------------------------------------------------------


def test_audit_records_the_delivered_id_and_the_sources_behind_it() -> None:
    route, obj = Route(), indicator()
    rec = record("cert", obj)
    result = route.step(rec)
    facts = delivered_facts(result)
    assert set(facts) == {*BANKS, *ISPS, "central-bank"}
    for subscriber, fact in facts.items():
        assert fact.delivered_id == minted_id(REGISTRY, rec.key, subscriber)
        assert fact.dedup_key == rec.key
        assert [(s.publisher, s.object_id) for s in fact.sources] == [("cert", obj["id"])]
    assert (
        facts["bank-a"].attribution == "anonymous" and facts["isp-one"].attribution == "attributed"
    )
    # denials and suppressed duplicates index nothing
    denied = [e for e in result.audit if not e.allow]
    assert denied and not {e.subscriber for e in denied} & set(facts)
    assert delivered_facts(route.step(rec)) == {}


# --- reports -------------------------------------------------------------------------------


def test_sightings_and_opinions_become_reports_one_per_named_id() -> None:
    target = f"indicator--{uuid.uuid4()}"
    (seen,) = reports_of(record("bank-a", sighting(target, count=4)))
    assert (seen.kind, seen.target_id, seen.count, seen.reporter) == (
        ReportKind.SIGHTING, target, 4, "bank-a",
    )  # fmt: skip
    assert (seen.first_seen, seen.last_seen, seen.pointer) == (
        "2026-06-01T09:00:00Z", "2026-06-01T09:30:00Z", "/sighting_of_ref",
    )  # fmt: skip
    other = f"indicator--{uuid.uuid4()}"
    fp = reports_of(record("bank-a", opinion([target, other, target])))
    assert [(r.kind, r.target_id, r.pointer) for r in fp] == [
        (ReportKind.FALSE_POSITIVE, target, "/object_refs/0"),
        (ReportKind.FALSE_POSITIVE, other, "/object_refs/1"),
    ]
    (agree,) = reports_of(record("bank-a", opinion([target], "agree")))
    assert agree.kind is ReportKind.NOT_FALSE_POSITIVE
    assert reports_of(record("bank-a", indicator())) == []


def test_a_sighting_of_an_object_of_the_same_submission_is_intel_not_feedback() -> None:
    own = indicator()
    of_own, of_received = sighting(own["id"]), sighting(f"indicator--{uuid.uuid4()}")
    mixed = opinion([own["id"], f"indicator--{uuid.uuid4()}"])
    outcome = normalise_submission(
        orjson.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}",
                      "objects": [own, of_own, of_received, mixed]}),
        REGISTRY.get("bank-a"), REGISTRY, Limits(), submission_id="s", received_at=T0,
        published_at=T0,
    )  # fmt: skip
    intel, reports = split_feedback(outcome.accepted)
    assert {r.object_id for r in intel} == {own["id"], of_own["id"]}
    assert [(r.report_id, r.target_id) for r in reports] == [
        (of_received["id"], of_received["sighting_of_ref"]),
        *((mixed["id"], ref) for ref in mixed["object_refs"]),
    ]


def fact(subscriber: str, delivered_id: str, *sources: tuple[str, str], **kw: Any) -> DeliveryFact:
    return DeliveryFact(
        delivered_id=delivered_id, subscriber=subscriber, dedup_key=kw.get("key", "k1"),
        attribution=kw.get("attribution", "anonymous"), agreement_id="cert-banks",
        sources=[{"publisher": p, "object_id": o} for p, o in sources], decided_at=T0,
    )  # fmt: skip


def report(
    reporter: str, target: str, kind: ReportKind = ReportKind.SIGHTING, **kw: Any
) -> FeedbackReport:
    return FeedbackReport(
        submission_id=kw.get("submission_id", "sub-1"), reporter=reporter,
        received_at=kw.get("at", T0), report_id=kw.get("report_id", f"sighting--{uuid.uuid4()}"),
        modified=kw.get("modified", "2026-06-01T10:00:00.000Z"), kind=kind, target_id=target,
        pointer="/sighting_of_ref", count=kw.get("count", 1),
        first_seen="2026-06-01T09:00:00Z", last_seen=kw.get("last_seen", "2026-06-01T09:30:00Z"),
    )  # fmt: skip


def test_a_report_about_an_id_not_delivered_to_the_reporter_gets_the_same_receipt_always() -> None:
    """The attacker (bank-a) probes: an id that exists but went to bank-b, and one that never
    existed.  Both receipts must be identical apart from the report's own ids."""
    delivered_to_b = f"indicator--{uuid.uuid4()}"
    index = DeliveredIndex()
    index = apply_delivery(index, fact("bank-b", delivered_to_b, ("cert", "indicator--x"))) or index
    foreign = accept_report(index, report("bank-a", delivered_to_b, report_id="sighting--1"))
    unknown = accept_report(
        DeliveredIndex(), report("bank-a", "indicator--nope", report_id="sighting--1")
    )
    assert foreign.contributions == unknown.contributions == []
    assert foreign.rejection is not None and foreign.rejection == unknown.rejection
    (rejection,) = foreign.rejection.rejections
    assert (
        rejection.reason is Reason.NOT_DELIVERED_TO_YOU
        and rejection.message == NOT_DELIVERED_MESSAGE
    )
    assert delivered_to_b not in foreign.rejection.model_dump_json()
    # the recipient itself is accepted, one contribution per producer object behind the id
    both = apply_delivery(
        DeliveredIndex(),
        fact("bank-b", delivered_to_b, ("cert", "indicator--x"), ("isp-one", "indicator--y")),
    )
    assert both is not None
    accepted = accept_report(both, report("bank-b", delivered_to_b))
    assert accepted.rejection is None
    assert [(c.source.publisher, c.source.object_id) for c in accepted.contributions] == [
        ("cert", "indicator--x"), ("isp-one", "indicator--y"),
    ]  # fmt: skip


def test_index_keeps_the_latest_fact_per_recipient_and_survives_its_encoding() -> None:
    first = fact("bank-a", "indicator--d", ("cert", "indicator--x"))
    index = apply_delivery(DeliveredIndex(), first)
    assert index is not None and apply_delivery(index, first) is None
    older = first.model_copy(update={"decided_at": T0 - timedelta(hours=1), "sources": []})
    assert apply_delivery(index, older) is None
    again = first.model_copy(update={"decided_at": T0 + timedelta(hours=1)})
    assert apply_delivery(index, again) is None  # a new version of the same delivery
    moved = again.model_copy(update={"agreement_id": "other"})
    assert apply_delivery(index, moved) == DeliveredIndex({"bank-a": moved})
    assert DeliveredIndex.decode(index.encode()) == index


def test_the_index_sends_one_record_per_partition_not_one_per_delivery() -> None:
    facts = [fact(s, f"indicator--{i}-{s}", ("cert", f"indicator--{i}")) for i in range(40)
             for s in BANKS]  # fmt: skip
    records = batch_deliveries(facts, lambda key: key_partition(key, 4))
    assert len(records) == len({key_partition(f.delivered_id.encode(), 4) for f in facts}) <= 4
    seen: list[DeliveryFact] = []
    for record in records:
        event = FeedbackEvent.model_validate_json(record.value)  # the schema reads it back
        assert event.delivery is None and len(event.deliveries) == record.facts
        assert record.key == event.deliveries[0].delivered_id.encode()
        # every fact lands on the partition its id's reports are sent to (murmur2, like Faust)
        assert {key_partition(f.delivered_id.encode(), 4) for f in event.deliveries} == {
            record.partition
        }
        seen += event.deliveries
    assert sorted(seen, key=facts.index) == facts  # none lost, none doubled
    assert seen == [
        f for r in records for f in FeedbackEvent.model_validate_json(r.value).deliveries
    ]
    # order within a partition is kept (a later fact about the same id must win)
    for record in records:
        mine = [f for f in facts if key_partition(f.delivered_id.encode(), 4) == record.partition]
        assert FeedbackEvent.model_validate_json(record.value).deliveries == mine


def test_index_records_are_split_below_the_size_limit() -> None:
    facts = [fact("bank-a", f"indicator--{i}", ("cert", f"indicator--s{i}")) for i in range(30)]
    size = len(facts[0].model_dump_json())
    records = batch_deliveries(facts, lambda key: 0, max_bytes=5 * size)
    assert len(records) > 1 and all(len(r.value) <= 5 * size for r in records)
    got = [f for r in records for f in FeedbackEvent.model_validate_json(r.value).deliveries]
    assert got == facts and sum(r.facts for r in records) == 30
    huge = batch_deliveries(facts[:2], lambda key: 0, max_bytes=10)  # a fact larger: alone
    assert [r.facts for r in huge] == [1, 1]


def test_the_partitioner_is_fausts() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    for key in (b"indicator--1", b"indicator--2f0a8f8e-0000", b"x" * 80):
        assert key_partition(key, 4) == DefaultPartitioner()(key, [0, 1, 2, 3], [0, 1, 2, 3])


def test_folded_deliveries_make_one_write_per_id_and_none_when_nothing_changed() -> None:
    a1 = fact("bank-a", "indicator--d", ("cert", "indicator--x"))
    b1 = fact("bank-b", "indicator--d", ("cert", "indicator--x"))
    other = fact("bank-a", "indicator--e", ("cert", "indicator--y"))
    groups = deliveries_by_id([a1, other, b1])
    assert groups == {"indicator--d": [a1, b1], "indicator--e": [other]}
    index = apply_deliveries(DeliveredIndex(), groups["indicator--d"])
    assert index == DeliveredIndex({"bank-a": a1, "bank-b": b1})
    assert apply_deliveries(index, [a1, b1]) is None  # a replay: no table write
    later = a1.model_copy(update={"decided_at": T0 + timedelta(hours=1), "agreement_id": "z"})
    assert apply_deliveries(index, [later, a1]) == DeliveredIndex({"bank-a": later, "bank-b": b1})
    assert apply_deliveries(DeliveredIndex(), []) is None


def test_an_old_one_fact_feedback_record_is_still_read() -> None:
    new = FeedbackEvent(delivery=fact("bank-a", "indicator--d")).model_dump_json()
    old = new.replace(',"deliveries":[]', "")  # as written before `deliveries` existed
    assert old != new
    event = FeedbackEvent.model_validate_json(old)
    assert event.delivery is not None and event.deliveries == []


# --- aggregation ---------------------------------------------------------------------------


SOURCE = "indicator--6f9c3f3e-2b1e-4f55-8d6c-0a1b2c3d4e5f"


def contribution(
    reporter: str, kind: ReportKind = ReportKind.SIGHTING, attribution: str = "anonymous", **kw: Any
) -> Contribution:
    return Contribution(
        dedup_key="k1", source={"publisher": "cert", "object_id": SOURCE}, reporter=reporter,
        attribution=attribution, agreement_id="cert-banks",
        report=report(reporter, "x", kind, **kw),
    )  # fmt: skip


def feed(state: KeyFeedback, c: Contribution, now: datetime, window: float = 0.0) -> Any:
    step = contribute(KeyFeedback.decode(state.encode()), c, REGISTRY, now, window)
    return step


def test_three_anonymous_banks_give_the_producer_one_sighting_of_its_own_id_count_3() -> None:
    state, versions = KeyFeedback(), []
    for n, bank in enumerate(BANKS):
        step = feed(
            state, contribution(bank, at=T0 + timedelta(seconds=n)), T0 + timedelta(seconds=n)
        )
        state = step.state
        (out,) = step.outputs
        assert out.producer == "cert" and out.sightings == 1
        versions += [o for o in out.objects if o["type"] == "sighting"]
    assert len({v["id"] for v in versions}) == 1
    assert [v["count"] for v in versions] == [1, 2, 3]
    assert [v["modified"] for v in versions] == sorted({v["modified"] for v in versions})
    last = versions[-1]
    assert last["sighting_of_ref"] == SOURCE and last["created_by_ref"] == REGISTRY.bus.identity_id
    assert last["x_stixbus_reporting_orgs"] == 3 and last["x_stixbus_sectors"] == ["bank"]
    assert "where_sighted_refs" not in last
    wire = orjson.dumps(step.outputs[0].objects).decode()
    for bank in BANKS:
        org = REGISTRY.get(bank)
        assert org.identity_id not in wire and org.name not in wire and f'"{bank}"' not in wire
    for obj in step.outputs[0].objects:
        assert stix_errors(obj) == [], obj


def test_attributed_reporters_are_named_and_their_identity_delivered() -> None:
    step = feed(KeyFeedback(), contribution("isp-one", attribution="attributed"), T0)
    objects = step.outputs[0].objects
    (seen,) = [o for o in objects if o["type"] == "sighting"]
    isp = REGISTRY.get("isp-one")
    assert seen["where_sighted_refs"] == [isp.identity_id]
    assert isp.identity_id in {o["id"] for o in objects if o["type"] == "identity"}
    assert all(stix_errors(o) == [] for o in objects)


def test_changes_within_the_window_are_coalesced_and_flushed_after_it() -> None:
    window = 60.0
    step = feed(KeyFeedback(), contribution("bank-a"), T0, window)
    assert len(step.outputs) == 1 and step.due is None
    step = feed(step.state, contribution("bank-b"), T0 + timedelta(seconds=10), window)
    step2 = feed(step.state, contribution("bank-c"), T0 + timedelta(seconds=20), window)
    assert step.outputs == step2.outputs == []
    assert step2.due == T0 + timedelta(seconds=window) == due_at(step2.state, window)
    early = flush(
        KeyFeedback.decode(step2.state.encode()), REGISTRY, T0 + timedelta(seconds=30), window
    )
    assert early.outputs == []
    done = flush(
        KeyFeedback.decode(step2.state.encode()), REGISTRY, T0 + timedelta(seconds=61), window
    )
    ((seen,),) = [[o for o in out.objects if o["type"] == "sighting"] for out in done.outputs]
    assert seen["count"] == 3 and done.due is None
    again = flush(
        KeyFeedback.decode(done.state.encode()), REGISTRY, T0 + timedelta(seconds=200), window
    )
    assert again.outputs == []


def test_the_flush_schedule_rebuilds_from_the_table_and_hands_each_due_key_once() -> None:
    window = 60.0
    held = feed(
        feed(KeyFeedback(), contribution("bank-a"), T0, window).state,
        contribution("bank-b"),
        T0 + timedelta(seconds=10),
        window,
    )
    assert held.due == T0 + timedelta(seconds=window)
    schedule = FlushSchedule()
    assert schedule.stale  # a fresh worker rebuilds from its table first
    schedule.rebuild([(b"k1", held.state.encode()), (b"k2", KeyFeedback().encode())], window)
    assert not schedule.stale and schedule.due == {b"k1": held.due}
    assert list(schedule.take_due(held.due - timedelta(seconds=1))) == []
    assert list(schedule.take_due(held.due)) == [b"k1"]
    assert list(schedule.take_due(held.due + timedelta(hours=1))) == []  # taken once
    schedule.set(b"k3", T0)
    schedule.set(b"k3", None)  # nothing held back any more
    assert schedule.due == {}
    assert flush_interval(60.0) == 5.0 and flush_interval(0.0) == 0.2 and flush_interval(1) == 0.5


def test_forwarded_deliveries_skip_repeats_but_not_a_change_back() -> None:
    forwarded = ForwardedDeliveries(limit=2)
    first = fact("bank-a", "indicator--1", ("cert", "indicator--0"))
    assert forwarded.is_new(first) and not forwarded.is_new(first)
    changed = fact("bank-a", "indicator--1", ("cert", "indicator--0"), attribution="attributed")
    assert forwarded.is_new(changed) and forwarded.is_new(first)  # back and forth both pass
    assert forwarded.is_new(fact("bank-b", "indicator--1"))
    assert forwarded.is_new(fact("bank-c", "indicator--1"))  # over the limit: memory cleared
    assert forwarded.is_new(first)


def test_a_replayed_or_older_report_changes_nothing() -> None:
    c = contribution(
        "bank-a", report_id="sighting--r1", modified="2026-06-01T10:00:00.000Z", count=2
    )
    step = feed(KeyFeedback(), c, T0)
    replay = feed(step.state, c, T0 + timedelta(minutes=5))
    assert replay.outputs == [] and replay.false_positives is None
    newer = contribution(
        "bank-a", report_id="sighting--r1", modified="2026-06-01T11:00:00.000Z", count=5
    )
    step = feed(step.state, newer, T0 + timedelta(minutes=6))
    (seen,) = [o for o in step.outputs[0].objects if o["type"] == "sighting"]
    assert seen["count"] == 5  # a new version of the same sighting replaces its count


def test_false_positive_reporters_are_counted_once_per_org_and_retractions_count_down() -> None:
    step = feed(
        KeyFeedback(), contribution("bank-a", ReportKind.FALSE_POSITIVE, report_id="opinion--1"), T0
    )
    assert step.false_positives == 1
    step = feed(
        step.state, contribution("bank-a", ReportKind.FALSE_POSITIVE, report_id="opinion--2"), T0
    )
    assert step.false_positives is None  # the same org again: still 1
    step = feed(
        step.state, contribution("bank-b", ReportKind.FALSE_POSITIVE, report_id="opinion--3"), T0
    )
    assert step.false_positives == 2
    (opinion_obj,) = [o for o in step.outputs[0].objects if o["type"] == "opinion"]
    assert opinion_obj["opinion"] == "strongly-disagree" and opinion_obj["object_refs"] == [SOURCE]
    assert opinion_obj["x_stixbus_false_positive_reports"] == 2 and "authors" not in opinion_obj
    assert stix_errors(opinion_obj) == []
    retract = contribution(
        "bank-b",
        ReportKind.NOT_FALSE_POSITIVE,
        report_id="opinion--3",
        modified="2026-06-02T00:00:00.000Z",
    )
    assert feed(step.state, retract, T0).false_positives == 1


# --- the policy at routing -----------------------------------------------------------------


def test_withhold_revokes_held_copies_and_lower_confidence_caps_with_audit_reasons() -> None:
    route, obj = Route(), indicator(confidence=80)
    rec = record("cert", obj)
    first = {d.subscriber: d.stix_object for d in route.step(rec).deliveries}
    assert first["isp-one"]["confidence"] == first["bank-a"]["confidence"] == 80
    route.counts[rec.key] = 1  # below both thresholds: a re-plan changes nothing
    assert route.step(Tick()).deliveries == []
    route.counts[rec.key] = 2
    result = route.step(Tick(), T0 + timedelta(minutes=1))
    got = {d.subscriber: d for d in result.deliveries}
    assert set(got) == {*BANKS, *ISPS}  # the regulator's agreement has no policy
    for isp in ISPS:
        assert got[isp].revocation and got[isp].stix_object["revoked"] is True
        assert got[isp].stix_object["id"] == first[isp]["id"]
    for bank in BANKS:
        assert not got[bank].revocation and got[bank].stix_object["confidence"] == 15
        assert got[bank].stix_object["id"] == first[bank]["id"]
    audit = {e.subscriber: e for e in result.audit}
    assert set(audit) == {*BANKS, *ISPS}
    for isp in ISPS:
        assert not audit[isp].allow and [r.code for r in audit[isp].reasons] == ["false_positive"]
        assert "cert-isps" in audit[isp].reasons[0].message
    for bank in BANKS:
        assert audit[bank].allow and audit[bank].delivered
        assert [t.kind for t in audit[bank].transformations][-1] == "lower_confidence"
    # settled: another tick sends nothing, and a new version keeps the policy
    assert route.step(Tick(), T0 + timedelta(minutes=2)).deliveries == []
    newer = dict(obj, modified="2026-05-02T00:00:00.000Z", confidence=90, name="Phishing page v2")
    later = route.step(record("cert", newer), T0 + timedelta(minutes=3))
    objs = {d.subscriber: d.stix_object for d in later.deliveries}
    assert not set(objs) & set(ISPS)  # revoked is final
    assert all(objs[b]["confidence"] == 15 for b in BANKS if b in objs)
    assert objs["central-bank"]["confidence"] == 90  # no policy in its agreement
    isp_audit = [e for e in later.audit if e.subscriber == "isp-one"]
    assert [r.code for r in isp_audit[0].reasons] == ["false_positive"]


def test_a_reporter_sending_one_sighting_per_hit_keeps_the_state_bounded_and_the_count() -> None:
    state = KeyFeedback()
    for n in range(200):
        modified = f"2026-06-01T10:{n // 60:02d}:{n % 60:02d}.000Z"
        c = contribution("bank-a", report_id=f"sighting--{n}", modified=modified, count=2)
        state = contribute(state, c, REGISTRY, T0, 0.0).state
    (source,) = state.sources.values()
    assert len(source.entries) <= MAX_REPORTS_PER_REPORTER + 1
    assert source.sighting is not None and source.sighting.body["count"] == 400
    assert KeyFeedback.decode(state.encode()) == state
