"""Properties of `decide` over random agreements and objects (Hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.agreement import Agreement
from schemas.envelope import NormalizedObject
from schemas.org import Sector, load_registry
from schemas.tlp import TLP
from stixbus import REPO_ROOT
from stixbus.decide import ReasonCode, decide

REGISTRY = load_registry(REPO_ROOT / "deploy" / "orgs.yaml")
ORG_IDS = [o.id for o in REGISTRY.orgs]
PARTIES = ORG_IDS + [f"sector:{s.value}" for s in Sector]
BASE = datetime(2026, 1, 1, tzinfo=UTC)
TLP_NAMES = ["clear", "green", "amber", "amber+strict", "red"]
OBJECT_TYPES = ["indicator", "sighting", "report", "observed-data"]
OBSERVABLES = ["url", "domain-name", "ipv4-addr", "file"]
TAGS = ["fraud", "phishing", "botnet"]

unique_lists = lambda values, **kw: st.lists(st.sampled_from(values), unique=True, **kw)  # noqa: E731


@st.composite
def agreements(draw: st.DrawFn, index: int) -> Agreement:
    start = draw(st.integers(-400, 400))
    length = draw(st.integers(1, 800))
    labels = draw(
        st.none()
        | st.fixed_dictionaries(
            {"mode": st.sampled_from(["any", "all"]), "values": unique_lists(TAGS, min_size=1)}
        )
    )
    data: dict[str, Any] = {
        "id": f"agreement-{index}",
        "version": draw(st.integers(1, 5)),
        "term": {
            "valid_from": BASE + timedelta(days=start),
            "valid_until": BASE + timedelta(days=start + length),
        },
        "purpose": {"code": "incident-response", "text": "test"},
        "publishers": draw(unique_lists(PARTIES, min_size=1, max_size=4)),
        "subscribers": draw(unique_lists(PARTIES, min_size=1, max_size=4)),
        "tlp_ceiling": draw(st.sampled_from(TLP_NAMES)),
        "object_types": draw(st.just(["*"]) | unique_lists(OBJECT_TYPES, min_size=1)),
        "observable_types": draw(st.just(["*"]) | unique_lists(OBSERVABLES, min_size=1)),
        "labels": labels,
        "min_confidence": draw(st.none() | st.integers(0, 100)),
        "attribution": draw(st.sampled_from(["attributed", "pseudonymous", "anonymous"])),
        "onward_sharing": draw(st.booleans()),
    }
    return Agreement.model_validate(data)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Agreement], NormalizedObject, str, str, datetime]:
    count = draw(st.integers(0, 5))
    agreement_list = [draw(agreements(i)) for i in range(count)]
    publisher = draw(st.sampled_from([o.id for o in REGISTRY.publishers]))
    subscriber = draw(st.sampled_from(ORG_IDS))
    tlp = draw(st.sampled_from(list(TLP)))
    stix: dict[str, Any] = {
        "type": draw(st.sampled_from(OBJECT_TYPES)),
        "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
        "object_marking_refs": [tlp.marking_id],
        "labels": draw(unique_lists(TAGS)),
    }
    confidence = draw(st.none() | st.integers(0, 100))
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
        observable_types=draw(unique_lists(OBSERVABLES)),
        object=stix,
    )
    now = BASE + timedelta(days=draw(st.integers(-500, 1500)))
    return agreement_list, obj, publisher, subscriber, now


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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
    _, obj, pub, sub, _ = scenario
    if decision.allow and obj.tlp >= TLP.AMBER_STRICT:
        assert chosen is not None and sub in chosen.named_subscribers
        assert decision.onward_sharing is False


@FAST
@given(scenarios())
def test_deny_when_no_agreement_covers_the_pair(scenario) -> None:
    agreement_list, obj, pub, sub, _ = scenario
    decision, _ = _decide(scenario)
    pub_sector, sub_sector = REGISTRY.get(pub).sector.value, REGISTRY.get(sub).sector.value
    covering = [
        a for a in agreement_list
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
