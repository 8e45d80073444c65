"""Properties of `decide` over random agreements and objects (Hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.agreement import Agreement
from schemas.envelope import NormalizedObject
from schemas.org import Sector
from schemas.tlp import TLP
from stixbus.core.decide import decide
from stixbus.core.decision import ReasonCode
from tests.helpers.paths import example_registry

REGISTRY = example_registry()
ORG_IDS = [o.id for o in REGISTRY.orgs]
PARTIES = ORG_IDS + [f"sector:{s.value}" for s in Sector]
BASE = datetime(2026, 1, 1, tzinfo=UTC)
TLP_NAMES = ["clear", "green", "amber", "amber+strict", "red"]
OBJECT_TYPES = ["indicator", "sighting", "report", "observed-data"]
OBSERVABLES = ["url", "domain-name", "ipv4-addr", "file"]
TAGS = ["fraud", "phishing", "botnet"]


def unique_lists(values: list[str], min_size: int = 0, max_size: int | None = None):
    return st.lists(st.sampled_from(values), unique=True, min_size=min_size, max_size=max_size)


# Built once: strategies created inside a draw are re-analysed by Hypothesis on every example.
LABELS = st.none() | st.fixed_dictionaries(
    {"mode": st.sampled_from(["any", "all"]), "values": unique_lists(TAGS, min_size=1)}
)
AGREEMENT_FIELDS = st.fixed_dictionaries(
    {
        "start": st.integers(-400, 400),
        "length": st.integers(1, 800),
        "version": st.integers(1, 5),
        "labels": LABELS,
        "publishers": unique_lists(PARTIES, min_size=1, max_size=4),
        "subscribers": unique_lists(PARTIES, min_size=1, max_size=4),
        "tlp_ceiling": st.sampled_from(TLP_NAMES),
        "object_types": st.just(["*"]) | unique_lists(OBJECT_TYPES, min_size=1),
        "observable_types": st.just(["*"]) | unique_lists(OBSERVABLES, min_size=1),
        "min_confidence": st.none() | st.integers(0, 100),
        "attribution": st.sampled_from(["attributed", "pseudonymous", "anonymous"]),
        "onward_sharing": st.booleans(),
    }
)


def build_agreement(index: int, fields: dict[str, Any]) -> Agreement:
    start, length = fields.pop("start"), fields.pop("length")
    return Agreement.model_validate(
        {
            **fields,
            "id": f"agreement-{index}",
            "term": {
                "valid_from": BASE + timedelta(days=start),
                "valid_until": BASE + timedelta(days=start + length),
            },
            "purpose": {"code": "incident-response", "text": "test"},
        }
    )


AGREEMENT_LISTS = st.lists(AGREEMENT_FIELDS, max_size=5).map(
    lambda many: [build_agreement(i, dict(f)) for i, f in enumerate(many)]
)
PUBLISHERS = st.sampled_from([o.id for o in REGISTRY.publishers])
SUBSCRIBERS = st.sampled_from(ORG_IDS)
TLPS = st.sampled_from(list(TLP))
TYPES = st.sampled_from(OBJECT_TYPES)
TAG_LISTS = unique_lists(TAGS)
OBSERVABLE_LISTS = unique_lists(OBSERVABLES)
CONFIDENCES = st.none() | st.integers(0, 100)
DAYS = st.integers(-500, 1500)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Agreement], NormalizedObject, str, str, datetime]:
    agreement_list = draw(AGREEMENT_LISTS)
    publisher = draw(PUBLISHERS)
    subscriber = draw(SUBSCRIBERS)
    tlp = draw(TLPS)
    stix: dict[str, Any] = {
        "type": draw(TYPES),
        "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
        "object_marking_refs": [tlp.marking_id],
        "labels": draw(TAG_LISTS),
    }
    confidence = draw(CONFIDENCES)
    if confidence is not None:
        stix["confidence"] = confidence
    obj = NormalizedObject(
        submission_id="s",
        publisher=publisher,
        received_at=BASE,
        published_at=BASE,
        object_id=stix["id"],
        object_type=stix["type"],
        tlp=tlp,
        observable_types=draw(OBSERVABLE_LISTS),
        object=stix,
    )
    now = BASE + timedelta(days=draw(DAYS))
    return agreement_list, obj, publisher, subscriber, now


FAST = settings(
    max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def _decide(scenario: tuple[list[Agreement], NormalizedObject, str, str, datetime]):
    agreement_list, obj, pub, sub, now = scenario
    decision = decide(obj, REGISTRY.get(pub), REGISTRY.get(sub), agreement_list, now, REGISTRY)
    chosen = next((a for a in agreement_list if a.id == decision.agreement_id), None)
    return decision, chosen


@FAST
@given(scenarios())
def test_never_above_the_ceiling_and_always_in_term(scenario) -> None:
    decision, chosen = _decide(scenario)
    if decision.allow:
        assert chosen is not None
        _, obj, _, _, now = scenario
        assert obj.tlp <= chosen.tlp_ceiling
        assert chosen.term.valid_from <= now < chosen.term.valid_until


@FAST
@given(scenarios())
def test_red_and_amber_strict_only_to_named_orgs_never_onward(scenario) -> None:
    decision, chosen = _decide(scenario)
    _, obj, _pub, sub, _ = scenario
    if decision.allow and obj.tlp >= TLP.AMBER_STRICT:
        assert chosen is not None and sub in chosen.named_subscribers
        assert decision.onward_sharing is False


@FAST
@given(scenarios())
def test_deny_when_no_agreement_covers_the_pair(scenario) -> None:
    agreement_list, _obj, pub, sub, _ = scenario
    decision, _ = _decide(scenario)
    pub_sector, sub_sector = REGISTRY.get(pub).sector.value, REGISTRY.get(sub).sector.value
    covering = [
        a
        for a in agreement_list
        if (pub in a.publishers or f"sector:{pub_sector}" in a.publishers)
        and (sub in a.subscribers or f"sector:{sub_sector}" in a.subscribers)
    ]
    if not covering:
        assert not decision.allow
    if pub == sub:
        assert not decision.allow and decision.reason_codes == (ReasonCode.SELF_DELIVERY,)
    if not decision.allow:
        assert decision.reasons and decision.agreement_id is None


@FAST
@given(scenarios())
def test_decision_is_deterministic_and_order_independent(scenario) -> None:
    agreement_list, obj, pub, sub, now = scenario
    first = decide(obj, REGISTRY.get(pub), REGISTRY.get(sub), agreement_list, now, REGISTRY)
    again = decide(obj, REGISTRY.get(pub), REGISTRY.get(sub), list(agreement_list), now, REGISTRY)
    reversed_order = decide(
        obj, REGISTRY.get(pub), REGISTRY.get(sub), agreement_list[::-1], now, REGISTRY
    )
    assert first == again
    assert (first.allow, first.agreement_id) == (reversed_order.allow, reversed_order.agreement_id)
    assert set(first.also_allowed_by) == set(reversed_order.also_allowed_by)
