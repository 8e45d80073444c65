"""De-duplication core without Kafka: merge_source (dedup.py) and plan_key (deliveries.py).

Records come from the real normaliser and decisions from the example agreements in
deploy/agreements.yaml, so these tests pin what the worker does for the local stack:

* cert publishes phishing URLs (TLP GREEN by default) → every bank (attributed), the ISPs (with
  confidence ≥ 70), the central bank, prosecution and the FIU;
* bank-a publishes the same URL (TLP AMBER by default) → the other banks and the association
  (anonymous, no onward sharing) and the CERT (attributed).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from stix2validator import ValidationOptions, validate_instance

from schemas.agreement import load_agreements
from schemas.envelope import NormalizedObject
from stixbus.core.decide import AgreementIndex
from stixbus.core.dedup import (
    PLANNING_PROPERTIES,
    KeyState,
    MergeOutcome,
    merge_source,
    unchecked_record,
)
from stixbus.core.deliveries import Delivery, Plan, RouteConfig, plan_key
from stixbus.core.expiry import (
    ExpiryIndex,
    due_for_tick,
    is_collectable,
    needs_revocation,
    state_deadline,
)
from stixbus.core.minting import minted_id, minted_object
from stixbus.core.normalise import normalise_submission
from stixbus.core.state_codec import deadline_header, decode_state, encode_state
from stixbus.settings import Limits
from tests.helpers.dedup_samples import indicator, version
from tests.helpers.paths import REPO_ROOT, example_registry

REGISTRY = example_registry()
AGREEMENTS = load_agreements(REPO_ROOT / "deploy" / "agreements.yaml")
INDEX = AgreementIndex(AGREEMENTS, REGISTRY)
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DEFAULT_CONFIG = RouteConfig()
CERT_RECIPIENTS = {
    "bank-a",
    "bank-b",
    "bank-c",
    "isp-one",
    "isp-two",
    "central-bank",
    "prosecution",
    "fiu",
}
BANK_A_RECIPIENTS = {"bank-b", "bank-c", "bank-assoc", "cert"}


def record(org: str, obj: dict[str, Any], at: datetime) -> NormalizedObject:
    outcome = normalise_submission(
        orjson.dumps(obj),
        REGISTRY.get(org),
        REGISTRY,
        Limits(),
        submission_id=str(uuid.uuid4()),
        received_at=at,
        published_at=at,
    )
    assert outcome.rejections == [], outcome.rejections
    (accepted,) = outcome.accepted
    return accepted


class Key:
    """One canonical key's state as the route agent would keep it."""

    def __init__(self, index: AgreementIndex = INDEX, config: RouteConfig = DEFAULT_CONFIG) -> None:
        self.state: KeyState | None = None
        self.index = index
        self.config = config
        self.received: dict[str, list[dict[str, Any]]] = {}

    def feed(
        self, org: str, obj: dict[str, Any], at: datetime
    ) -> tuple[MergeOutcome, dict[str, Delivery]]:
        rec = record(org, obj, at)
        state, outcome = merge_source(self.state, rec, at)
        self.state = state
        if outcome not in (MergeOutcome.NEW_SOURCE, MergeOutcome.NEW_VERSION):
            return outcome, {}
        return outcome, self._apply(
            plan_key(state, rec.object_id, REGISTRY, self.index, at, self.config)
        )

    def tick(self, at: datetime) -> dict[str, Delivery]:
        assert self.state is not None
        return self._apply(plan_key(self.state, None, REGISTRY, self.index, at, self.config))

    def _apply(self, plan: Plan) -> dict[str, Delivery]:
        self.state = plan.state
        by_subscriber = {}
        for delivery in plan.deliveries:
            assert delivery.subscriber not in by_subscriber, "two deliveries to one subscriber"
            by_subscriber[delivery.subscriber] = delivery
            self.received.setdefault(delivery.subscriber, []).append(delivery.stix_object)
        return by_subscriber


def stix_errors(obj: dict[str, Any]) -> list[str]:
    result = validate_instance(obj, ValidationOptions(version="2.1"))
    return [str(e) for e in result.errors]


def test_cross_producer_duplicates_give_one_minted_indicator_per_subscriber() -> None:
    key = Key()
    cert_obj = indicator()
    bank_obj = indicator(pattern="[url:value = 'HTTP://LOGIN-BANK.EXAMPLE/verify']")
    rec_cert, rec_bank = record("cert", cert_obj, T0), record("bank-a", bank_obj, T0)
    assert rec_cert.dedup_key == rec_bank.dedup_key is not None

    outcome, first = key.feed("cert", cert_obj, T0)
    assert outcome is MergeOutcome.NEW_SOURCE
    assert set(first) == CERT_RECIPIENTS
    outcome, second = key.feed("bank-a", bank_obj, T0 + timedelta(minutes=1))
    assert outcome is MergeOutcome.NEW_SOURCE
    # bank-b/bank-c now also have bank-a's (AMBER, no onward sharing) view: stricter marking
    # → new version; cert newly sees the indicator; bank-assoc sees bank-a's only.
    assert set(second) == BANK_A_RECIPIENTS

    assert key.state is not None and len(key.state.sources) == 2
    for subscriber, objects in key.received.items():
        assert {o["id"] for o in objects} == {minted_id(REGISTRY, key.state.key, subscriber)}
        for obj in objects:
            assert obj["created_by_ref"] == REGISTRY.bus.identity_id
            assert obj["pattern"] == "[url:value = 'http://login-bank.example/verify']"
    bank_b = key.received["bank-b"][-1]
    refs = bank_b["x_stixbus_sources"]
    assert len(refs) == 2
    assert {"source_ref": cert_obj["id"], "modified": cert_obj["modified"],
            "created_by_ref": REGISTRY.get("cert").identity_id} in refs  # fmt: skip
    # the producers' objects are never edited: the state holds them as accepted
    assert key.state.sources[cert_obj["id"]].record.object["id"] == cert_obj["id"]
    assert "x_stixbus_sources" not in key.state.sources[bank_obj["id"]].record.object


def test_anonymous_attribution_hides_the_source() -> None:
    key = Key()
    bank_obj = indicator()
    _, deliveries = key.feed("bank-a", bank_obj, T0)
    bank_a = REGISTRY.get("bank-a")
    for subscriber in ("bank-b", "bank-c", "bank-assoc"):
        obj = deliveries[subscriber].stix_object
        raw = orjson.dumps(obj).decode()
        assert bank_obj["id"] not in raw and bank_a.identity_id not in raw
        assert obj["x_stixbus_sources"] == [{"created_by_ref": REGISTRY.bus.identity_id}]
    cert_view = deliveries["cert"].stix_object  # banks-to-cert is attributed
    assert cert_view["x_stixbus_sources"][0]["source_ref"] == bank_obj["id"]
    # a second anonymous source is not "newly visible": no redelivery
    _, more = key.feed("bank-c", indicator(), T0 + timedelta(minutes=1))
    assert "bank-b" not in more


def test_identical_resubmission_delivers_nothing() -> None:
    key = Key()
    obj = indicator()
    key.feed("cert", obj, T0)
    outcome, deliveries = key.feed("cert", obj, T0 + timedelta(hours=1))
    assert outcome is MergeOutcome.IDENTICAL and deliveries == {}
    assert key.state is not None
    held = key.state.sources[obj["id"]]
    assert held.first_seen == T0 and held.last_seen == T0 + timedelta(hours=1)
    # planning again from an unchanged state is idempotent too
    assert key.tick(T0 + timedelta(hours=2)) == {}


def test_new_version_without_material_change_delivers_nothing() -> None:
    key = Key()
    obj = indicator()
    key.feed("cert", obj, T0)
    _, deliveries = key.feed(
        "cert", version(obj, "2026-05-02T00:00:00.000Z", description="typo fixed"), T0
    )
    assert deliveries == {}
    # an older version is stale
    outcome, _ = key.feed("cert", version(obj, "2026-04-30T00:00:00.000Z"), T0)
    assert outcome is MergeOutcome.STALE


def test_confidence_step() -> None:
    key = Key()
    obj = indicator(confidence=80)
    key.feed("cert", obj, T0)
    _, small = key.feed("cert", version(obj, "2026-05-02T00:00:00.000Z", confidence=85), T0)
    assert small == {}
    _, big = key.feed("cert", version(obj, "2026-05-03T00:00:00.000Z", confidence=90), T0)
    assert set(big) == CERT_RECIPIENTS
    assert big["bank-b"].stix_object["confidence"] == 90

    fine = Key(config=RouteConfig(confidence_step=5))
    fine.feed("cert", obj, T0)
    _, five = fine.feed("cert", version(obj, "2026-05-02T00:00:00.000Z", confidence=85), T0)
    assert set(five) == CERT_RECIPIENTS


def test_validity_extension_is_material_shortening_is_not() -> None:
    key = Key()
    obj = indicator(valid_until="2026-07-01T00:00:00Z")
    _, first = key.feed("cert", obj, T0)
    assert first["bank-b"].stix_object["valid_until"] == "2026-07-01T00:00:00Z"
    # the same instant written differently is no change
    _, same = key.feed(
        "cert", version(obj, "2026-05-02T00:00:00.000Z", valid_until="2026-07-01T00:00:00.000Z"),
        T0,
    )  # fmt: skip
    assert same == {}
    _, extended = key.feed(
        "cert", version(obj, "2026-05-03T00:00:00.000Z", valid_until="2026-08-01T00:00:00Z"), T0
    )
    assert set(extended) == CERT_RECIPIENTS
    v1, v2 = key.received["bank-b"]
    assert v2["id"] == v1["id"] and v2["created"] == v1["created"]
    assert v2["modified"] > v1["modified"] and v2["valid_until"] == "2026-08-01T00:00:00Z"
    _, shortened = key.feed(
        "cert", version(obj, "2026-05-04T00:00:00.000Z", valid_until="2026-07-15T00:00:00Z"), T0
    )
    assert shortened == {}


def test_revocation_by_one_of_two_sources_then_both() -> None:
    key = Key()
    cert_obj, bank_obj = indicator(), indicator()
    key.feed("cert", cert_obj, T0)
    key.feed("bank-a", bank_obj, T0 + timedelta(minutes=1))
    recipients = set(key.received)
    assert recipients == CERT_RECIPIENTS | BANK_A_RECIPIENTS

    t1 = T0 + timedelta(minutes=2)
    _, first = key.feed("cert", version(cert_obj, "2026-05-02T00:00:00.000Z", revoked=True), t1)
    # bank-b and bank-c still have bank-a vouching: no revocation for them; cert never got the
    # CERT's own source; the CERT-only recipients get the revoked version now.
    assert set(first) == CERT_RECIPIENTS - {"bank-b", "bank-c"}
    assert all(d.revocation and d.stix_object["revoked"] is True for d in first.values())
    assert key.state is not None and key.state.settled_at is None
    assert not needs_revocation(key.state, t1)  # bank-b's view is backed by bank-a now

    t2 = T0 + timedelta(minutes=3)
    _, second = key.feed("bank-a", version(bank_obj, "2026-05-02T00:00:00.000Z", revoked=True), t2)
    assert set(second) == {"bank-b", "bank-c", "bank-assoc", "cert"}
    for subscriber, objects in key.received.items():
        assert objects[-1]["revoked"] is True, subscriber
        assert sum(1 for o in objects if o.get("revoked")) == 1, subscriber
        assert objects[-1]["modified"] > objects[-2]["modified"] if len(objects) > 1 else True
    assert key.state.settled_at == t2
    # revoked is final: a later version of a revoked source changes nothing
    outcome, _ = key.feed("bank-a", version(bank_obj, "2026-05-03T00:00:00.000Z"), t2)
    assert outcome is MergeOutcome.AFTER_REVOCATION
    assert key.tick(t2 + timedelta(hours=1)) == {}


def test_revocation_reaches_a_subscriber_whose_agreement_was_removed() -> None:
    key = Key()
    obj = indicator()
    key.feed("cert", obj, T0)
    key.index = AgreementIndex([a for a in AGREEMENTS if a.id != "cert-to-banks-fraud"], REGISTRY)
    _, revoked = key.feed("cert", version(obj, "2026-05-02T00:00:00.000Z", revoked=True), T0)
    assert {"bank-a", "bank-b", "bank-c"} <= set(revoked)
    assert revoked["bank-b"].stix_object["revoked"] is True


def test_expiry_by_tick_and_gc() -> None:
    key = Key()
    obj = indicator(valid_until="2026-06-02T00:00:00Z")
    key.feed("cert", obj, T0)
    assert key.state is not None
    assert not due_for_tick(key.state, T0 + timedelta(hours=1), grace_seconds=60)
    later = datetime(2026, 6, 2, 0, 0, 5, tzinfo=UTC)
    assert needs_revocation(key.state, later)
    expired = key.tick(later)
    assert set(expired) == CERT_RECIPIENTS
    for delivery in expired.values():
        # the version timestamp is the moment the indicator expired, not the tick's clock
        assert delivery.stix_object["modified"] == "2026-06-02T00:00:00.000Z"
        assert delivery.stix_object["revoked"] is True
    assert not needs_revocation(key.state, later)
    assert key.state.settled_at == later
    assert not is_collectable(key.state, later + timedelta(seconds=30), grace_seconds=60)
    assert is_collectable(key.state, later + timedelta(seconds=61), grace_seconds=60)
    # an indicator that was already expired on arrival is never delivered
    stale = Key()
    _, nothing = stale.feed("cert", indicator(valid_until="2026-05-15T00:00:00Z"), T0)
    assert nothing == {}


def test_expiry_of_one_source_keeps_the_other() -> None:
    key = Key()
    key.feed("cert", indicator(valid_until="2026-06-02T00:00:00Z"), T0)
    key.feed("bank-a", indicator(valid_until="2026-06-10T00:00:00Z"), T0)
    between = datetime(2026, 6, 3, tzinfo=UTC)
    ticked = key.tick(between)
    assert "bank-b" not in ticked and ticked["isp-one"].stix_object["revoked"] is True
    assert key.state is not None and not needs_revocation(key.state, between)
    assert set(key.tick(datetime(2026, 6, 11, tzinfo=UTC))) >= {"bank-b", "bank-c", "cert"}


def test_conflict_same_version_different_content() -> None:
    key = Key()
    obj = indicator()
    key.feed("cert", obj, T0)
    before = key.state
    outcome, deliveries = key.feed("cert", {**obj, "confidence": 10}, T0)
    assert outcome is MergeOutcome.CONFLICT and deliveries == {}
    assert key.state == before


def test_replay_remints_the_same_versions() -> None:
    """After a crash the worker may re-process records from an older state: same output."""
    obj = indicator(valid_until="2026-06-02T00:00:00Z")
    rec = record("cert", obj, T0)
    revoked = record("cert", version(obj, "2026-05-02T00:00:00.000Z", revoked=True), T0)
    runs = []
    for clock in (T0 + timedelta(seconds=1), T0 + timedelta(minutes=7)):
        state, _ = merge_source(None, rec, clock)
        plan1 = plan_key(state, rec.object_id, REGISTRY, INDEX, clock)
        state2, _ = merge_source(plan1.state, revoked, clock)
        plan2 = plan_key(state2, revoked.object_id, REGISTRY, INDEX, clock + timedelta(seconds=3))
        runs.append([d.stix_object for d in plan1.deliveries + plan2.deliveries])
    assert runs[0] == runs[1]
    assert {(o["id"], o["modified"]) for o in runs[0]} == {
        (o["id"], o["modified"]) for o in runs[1]
    }


def test_version_timestamps_strictly_increase_at_millisecond_precision() -> None:
    key = Key(config=RouteConfig(confidence_step=1))
    obj = indicator(confidence=50)
    at = T0 + timedelta(microseconds=123_900)
    key.feed("cert", obj, at)
    for n in range(1, 4):  # same Kafka timestamp, sub-millisecond apart
        key.feed(
            "cert",
            version(obj, f"2026-05-0{n + 1}T00:00:00.000Z", confidence=50 + n),
            at + timedelta(microseconds=100 * n),
        )
    stamps = [o["modified"] for o in key.received["bank-b"]]
    assert len(stamps) == 4 and stamps == sorted(set(stamps))


@pytest.mark.parametrize("publishers", [("cert",), ("bank-a",), ("cert", "bank-a")])
def test_minted_objects_are_valid_stix(publishers: tuple[str, ...]) -> None:
    key = Key()
    plans: list[Delivery] = []
    for n, org in enumerate(publishers):
        _, deliveries = key.feed(org, indicator(valid_until="2026-06-02T00:00:00Z"), T0)
        plans += deliveries.values()
        assert n >= 0
    plans += key.tick(datetime(2026, 6, 3, tzinfo=UTC)).values()
    assert plans
    for delivery in plans:
        assert stix_errors(delivery.stix_object) == [], delivery.stix_object
        for companion in delivery.companions:
            assert stix_errors(companion) == [], companion


# --- state encoding, expiry index, memoised decisions -------------------------------------


CERT_OBJ = indicator(valid_until="2026-06-02T00:00:00Z")
BANK_OBJ = indicator(valid_until="2026-06-05T00:00:00Z", confidence=60)


def _scenario(roundtrip: bool) -> tuple[list[dict[str, Any]], KeyState]:
    """Two producers, a new version, a revocation and an expiry tick, with or without the
    table encoding between steps (what the route agent does per event)."""
    cert_obj, bank_obj = CERT_OBJ, BANK_OBJ
    steps: list[tuple[str | None, dict[str, Any] | None, datetime]] = [
        ("cert", cert_obj, T0),
        ("bank-a", bank_obj, T0 + timedelta(minutes=1)),
        ("cert", version(cert_obj, "2026-05-02T00:00:00.000Z", confidence=95), T0 + timedelta(2)),
        ("bank-a", version(bank_obj, "2026-05-02T00:00:00.000Z", revoked=True), T0),
        (None, None, datetime(2026, 6, 3, tzinfo=UTC)),
    ]
    state: KeyState | None = None
    out: list[dict[str, Any]] = []
    for org, obj, at in steps:
        if roundtrip and state is not None:
            state = decode_state(encode_state(state))
        if org is None:
            assert state is not None
            plan = plan_key(state, None, REGISTRY, INDEX, at)
        else:
            assert obj is not None
            rec = record(org, obj, at).model_copy(update={"submission_id": "s"})
            state, _ = merge_source(state, rec, at)
            plan = plan_key(state, rec.object_id, REGISTRY, INDEX, at)
        state = plan.state
        out += [d.stix_object for d in plan.deliveries]
    assert state is not None
    return out, state


def test_state_encoding_round_trips_and_does_not_change_deliveries() -> None:
    plain, state = _scenario(roundtrip=False)
    encoded, _ = _scenario(roundtrip=True)
    assert plain and [orjson.dumps(o) for o in plain] == [orjson.dumps(o) for o in encoded]
    assert decode_state(encode_state(state)) == state
    assert encode_state(decode_state(encode_state(state))) == encode_state(state)
    for obj in plain:
        assert stix_errors(obj) == [], obj


def test_minted_keys_keep_only_planning_properties() -> None:
    key = Key()
    obj = indicator(
        description="x" * 5000, external_references=[{"source_name": "cert", "external_id": "c-1"}]
    )
    key.feed("cert", obj, T0)
    assert key.state is not None
    held = key.state.sources[obj["id"]].record.object
    assert set(held) <= set(PLANNING_PROPERTIES) and "description" not in held
    assert len(encode_state(key.state)) < 4000
    # the hash still covers the whole object: a different description is a conflict
    outcome, _ = key.feed("cert", {**obj, "description": "other"}, T0)
    assert outcome is MergeOutcome.CONFLICT


def test_fast_record_equals_model_construct() -> None:
    rec = record("cert", indicator(), T0)
    fast = unchecked_record(dict(rec.__dict__))
    assert fast == rec == NormalizedObject.model_construct(**rec.__dict__)
    assert fast.model_dump() == rec.model_dump() and fast.key == rec.key


def test_first_encoding_is_still_read() -> None:
    """Tables written before the schema-2 encoding decode to the same state."""
    _, state = _scenario(roundtrip=False)
    legacy = {
        "key": state.key,
        "canonical_pattern": state.canonical_pattern,
        "sources": {
            sid: {
                "record": src.record.model_dump(mode="json"),
                "content_hash": src.content_hash + "0" * 32,
                "first_seen": src.first_seen.isoformat(),
                "last_seen": src.last_seen.isoformat(),
            }
            for sid, src in state.sources.items()
        },
        "views": {
            sub: {
                "delivered": minted_object(view, state.key, sub, REGISTRY),
                "source_ids": list(view.source_ids),
                "agreement_id": view.agreement_id,
                "agreement_version": view.agreement_version,
            }
            for sub, view in state.views.items()
        },
        "settled_at": state.settled_at.isoformat() if state.settled_at else None,
    }
    decoded = decode_state(orjson.dumps(legacy))
    assert deadline_header(orjson.dumps(legacy)) is None
    assert decoded == state


def test_profiled_decisions_equal_plain_ones() -> None:
    index = AgreementIndex(AGREEMENTS, REGISTRY)
    objects = [
        record("cert", indicator(), T0),
        record("cert", indicator(confidence=10), T0),
        record("bank-a", indicator(labels=["fraud"]), T0),
        record("isp-one", indicator(pattern="[ipv4-addr:value = '203.0.113.9']"), T0),
    ]
    for at in (T0, datetime(2020, 1, 1, tzinfo=UTC), datetime(2040, 1, 1, tzinfo=UTC)):
        for _ in range(2):  # second round from the memo
            for rec in objects:
                publisher = REGISTRY.get(rec.publisher)
                for subscriber in REGISTRY.subscribers:
                    assert index.decide_profiled(
                        rec, index.profile(rec), publisher, subscriber, at
                    ) == index.decide(rec, publisher, subscriber, at)


def test_deadline_matches_due_for_tick() -> None:
    """The deadline in the encoded header is the first moment the key is due for a tick."""
    key = Key()
    key.feed("cert", indicator(valid_until="2026-06-02T00:00:00Z"), T0)
    key.feed("bank-a", indicator(valid_until="2026-06-04T00:00:00Z"), T0)
    assert key.state is not None
    deadline = state_deadline(key.state, grace_seconds=60)
    assert deadline == datetime(2026, 6, 2, tzinfo=UTC)
    assert deadline_header(encode_state(key.state)) == (deadline, None)
    assert not due_for_tick(key.state, deadline - timedelta(microseconds=1), 60)
    assert due_for_tick(key.state, deadline, 60)
    key.tick(deadline)
    assert state_deadline(key.state, 60) == datetime(2026, 6, 4, tzinfo=UTC)
    end = datetime(2026, 6, 4, tzinfo=UTC)
    key.tick(end)
    assert key.state.settled_at == end
    gc = state_deadline(key.state, 60)
    assert gc is not None and not is_collectable(key.state, gc - timedelta(microseconds=1), 60)
    assert is_collectable(key.state, gc, 60)
    # nobody may receive it: it still settles once its sources expire (and is then collected)
    lonely = Key(index=AgreementIndex([], REGISTRY))
    lonely.feed("cert", indicator(valid_until="2026-06-02T00:00:00Z"), T0)
    assert lonely.state is not None and not lonely.state.views
    assert state_deadline(lonely.state, 60) == datetime(2026, 6, 2, tzinfo=UTC)
    lonely.tick(datetime(2026, 6, 2, tzinfo=UTC))
    assert lonely.state.settled_at == datetime(2026, 6, 2, tzinfo=UTC)


def test_expiry_index() -> None:
    index = ExpiryIndex()
    t = datetime(2026, 6, 1, tzinfo=UTC)
    index.begin_rebuild(t)  # an empty table
    index.end_rebuild()
    index.set(b"a", t + timedelta(seconds=10), created=True)
    index.set(b"b", t + timedelta(seconds=5), created=True)
    index.set(b"c", None, created=True)
    index.set(b"b", t + timedelta(seconds=20))  # moved later
    assert len(index) == 3 and index.held == 2 and index.pop_due(t + timedelta(seconds=9)) == []
    assert index.pop_due(t + timedelta(seconds=10)) == [b"a"]
    index.discard(b"b")
    assert index.pop_due(t + timedelta(days=1)) == [] and len(index) == 2 and index.held == 0
    # a rebuild keeps what the agent wrote meanwhile
    index.set(b"d", t, created=True)
    index.begin_rebuild(t)
    index.set(b"e", t + timedelta(seconds=1))
    index.rebuilt([(b"e", t + timedelta(hours=9)), (b"f", t + timedelta(seconds=2))])
    index.end_rebuild()
    assert not index.stale and len(index) == 2
    assert index.pop_due(t + timedelta(seconds=3)) == [b"e", b"f"]
    index.set(b"g", t, created=True)
    index.set_if_absent(b"g", t + timedelta(days=1))
    assert index.pop_due(t) == [b"g"]


def test_memoised_routing_audits_each_object_under_its_own_id() -> None:
    """Keys whose sources look alike share one routing; the audit still names each object."""
    for n in range(3):
        pattern = f"[url:value = 'http://memo-{n}.example.com/x']"
        rec = record("cert", indicator(pattern=pattern), T0)
        state, _ = merge_source(None, rec, T0)
        plan = plan_key(state, rec.object_id, REGISTRY, INDEX, T0)
        assert len(plan.decisions) == len(REGISTRY.subscribers)
        assert {d.object_id for d in plan.decisions} == {rec.object_id}
        assert plan.decisions == [
            INDEX.decide(rec, REGISTRY.get("cert"), s, T0) for s in REGISTRY.subscribers
        ]
