"""Decision table: one test per rule, each with the allowed and the denied side."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.agreement import Agreement, AgreementSet, Attribution
from schemas.envelope import NormalizedObject
from schemas.org import Org, Sector
from schemas.tlp import TLP, TLP1_MARKING_ID, TLP2_MARKING_ID
from stixbus.core.decide import AgreementIndex, decide
from stixbus.core.decision import ReasonCode, TransformKind
from tests.helpers.agreements import make_agreement
from tests.helpers.paths import example_registry

REGISTRY = example_registry()
NOW = datetime(2026, 6, 1, tzinfo=UTC)
CERT, BANK_A, BANK_B = REGISTRY.get("cert"), REGISTRY.get("bank-a"), REGISTRY.get("bank-b")
ISP = REGISTRY.get("isp-one")


def agreement(**overrides: Any) -> Agreement:
    return make_agreement(
        **{
            **{
                "id": "cert-to-banks",
                "version": 3,
                "purpose": {"code": "fraud-prevention", "text": "Protect customers."},
            },
            **overrides,
        }
    )


def indicator(
    tlp: TLP = TLP.GREEN,
    publisher: str = "cert",
    observables: tuple[str, ...] = ("url",),
    **stix: Any,
) -> NormalizedObject:
    obj = {
        "type": "indicator",
        "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
        "object_marking_refs": [TLP2_MARKING_ID[tlp]],
        **stix,
    }
    return NormalizedObject(
        submission_id="sub-1",
        publisher=publisher,
        received_at=NOW,
        published_at=NOW,
        object_id=obj["id"],
        object_type=obj["type"],
        modified="2026-05-01T00:00:00.000Z",
        tlp=tlp,
        observable_types=list(observables),
        object=obj,
    )


def run(
    obj: NormalizedObject,
    *agreements: Agreement,
    pub: Org = CERT,
    sub: Org = BANK_A,
    now: datetime = NOW,
):
    return decide(obj, pub, sub, list(agreements), now, REGISTRY)


def codes(decision: Any) -> set[ReasonCode]:
    return set(decision.reason_codes)


def test_allow_records_agreement_version_and_reason() -> None:
    d = run(indicator(), agreement())
    assert d.allow and d.agreement_id == "cert-to-banks" and d.agreement_version == 3
    assert d.reason_codes == (ReasonCode.ALLOWED,)
    assert d.as_record()["reasons"][0]["code"] == "allowed"


def test_no_agreement_denies() -> None:
    d = run(indicator())
    assert not d.allow and codes(d) == {ReasonCode.NO_MATCHING_AGREEMENT}


def test_publisher_not_party_and_subscriber_not_party() -> None:
    only_isp_publishes = agreement(publishers=["sector:isp"])
    d = run(indicator(), only_isp_publishes)
    assert codes(d) == {ReasonCode.NO_MATCHING_AGREEMENT, ReasonCode.PUBLISHER_NOT_PARTY}
    only_isps_subscribe = agreement(subscribers=["sector:isp"])
    d = run(indicator(), only_isps_subscribe)
    assert codes(d) == {ReasonCode.NO_MATCHING_AGREEMENT, ReasonCode.SUBSCRIBER_NOT_PARTY}
    assert run(indicator(), only_isps_subscribe, sub=ISP).allow


def test_sector_and_named_parties_both_match() -> None:
    assert run(indicator(), agreement(subscribers=["bank-a"])).allow
    assert not run(indicator(), agreement(subscribers=["bank-a"]), sub=BANK_B).allow
    assert run(indicator(), agreement(subscribers=["sector:bank"]), sub=BANK_B).allow


def test_unknown_org_denies() -> None:
    stranger = Org(
        id="bank-z",
        name="Zeta",
        sector=Sector.BANK,
        default_tlp=TLP.AMBER,
        identity_id="identity--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
        roles={"subscriber"},
    )
    d = run(indicator(), agreement(subscribers=["sector:bank", "bank-z"]), sub=stranger)
    assert not d.allow and codes(d) == {ReasonCode.UNKNOWN_ORG}
    impostor = CERT.model_copy(update={"name": "Not the CERT"})
    assert codes(run(indicator(), agreement(), pub=impostor)) == {ReasonCode.UNKNOWN_ORG}


def test_publisher_must_match_the_object() -> None:
    d = run(indicator(publisher="bank-b"), agreement())
    assert codes(d) == {ReasonCode.PUBLISHER_MISMATCH}


def test_self_delivery_denied() -> None:
    mutual = agreement(publishers=["sector:bank"], subscribers=["sector:bank"])
    assert codes(run(indicator(publisher="bank-a"), mutual, pub=BANK_A, sub=BANK_A)) == {
        ReasonCode.SELF_DELIVERY
    }
    assert run(indicator(publisher="bank-a"), mutual, pub=BANK_A, sub=BANK_B).allow


def test_subscriber_role_required() -> None:
    # central-bank is subscriber-only: it can never publish.
    central = REGISTRY.get("central-bank")
    a = agreement(publishers=["central-bank"], subscribers=["bank-a"])
    d = run(indicator(publisher="central-bank"), a, pub=central)
    assert ReasonCode.PUBLISHER_ROLE_MISSING in codes(d)


def test_term_not_yet_valid_and_expired() -> None:
    a = agreement()
    assert codes(run(indicator(), a, now=datetime(2025, 12, 31, 23, 59, tzinfo=UTC))) == {
        ReasonCode.AGREEMENT_NOT_YET_VALID
    }
    assert run(indicator(), a, now=datetime(2026, 1, 1, tzinfo=UTC)).allow
    assert run(indicator(), a, now=datetime(2027, 12, 31, 23, 59, tzinfo=UTC)).allow
    assert codes(run(indicator(), a, now=datetime(2028, 1, 1, tzinfo=UTC))) == {
        ReasonCode.AGREEMENT_EXPIRED
    }


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        run(indicator(), agreement(), now=datetime(2026, 6, 1))


@pytest.mark.parametrize(
    ("tlp", "ceiling", "allowed"),
    [
        (TLP.CLEAR, "clear", True),
        (TLP.GREEN, "clear", False),
        (TLP.GREEN, "green", True),
        (TLP.AMBER, "green", False),
        (TLP.AMBER, "amber", True),
        (TLP.AMBER_STRICT, "amber", False),
        (TLP.RED, "amber+strict", False),
    ],
)
def test_tlp_ceiling(tlp: TLP, ceiling: str, allowed: bool) -> None:
    d = run(
        indicator(tlp), agreement(tlp_ceiling=ceiling, subscribers=["bank-a"], onward_sharing=False)
    )
    assert d.allow is allowed
    if not allowed:
        assert codes(d) == {ReasonCode.TLP_ABOVE_CEILING}


def test_tlp1_markings_count_on_the_same_lattice() -> None:
    obj = indicator(TLP.GREEN, object_marking_refs=[TLP1_MARKING_ID[TLP.AMBER]])
    # The NormalizedObject says GREEN but the object's own marking says AMBER: the higher wins.
    assert codes(run(obj, agreement(tlp_ceiling="green"))) == {ReasonCode.TLP_ABOVE_CEILING}


def test_red_only_to_individually_named_subscribers() -> None:
    through_sector = agreement(tlp_ceiling="red", onward_sharing=False)
    assert codes(run(indicator(TLP.RED), through_sector)) == {
        ReasonCode.RED_REQUIRES_NAMED_RECIPIENT
    }
    named = agreement(
        tlp_ceiling="red", subscribers=["sector:bank", "bank-a"], onward_sharing=False
    )
    assert run(indicator(TLP.RED), named).allow
    assert not run(indicator(TLP.RED), named, sub=BANK_B).allow


def test_amber_strict_only_to_named_subscriber_and_never_onward() -> None:
    through_sector = agreement(tlp_ceiling="amber+strict")
    assert codes(run(indicator(TLP.AMBER_STRICT), through_sector)) == {
        ReasonCode.AMBER_STRICT_NOT_NAMED
    }
    named = agreement(tlp_ceiling="amber+strict", subscribers=["bank-a"], onward_sharing=True)
    d = run(indicator(TLP.AMBER_STRICT), named)
    assert d.allow and d.onward_sharing is False
    assert run(indicator(TLP.AMBER), named).onward_sharing is True


def test_unknown_marking_denied() -> None:
    odd = "marking-definition--3a6bd5a8-8d7f-4d35-a0a4-2f1a9b5f2f6e"
    obj = indicator(object_marking_refs=[TLP2_MARKING_ID[TLP.GREEN], odd])
    d = run(obj, agreement())
    assert codes(d) == {ReasonCode.UNKNOWN_MARKING} and odd in d.reasons[0].message
    granular = indicator(granular_markings=[{"marking_ref": odd, "selectors": ["name"]}])
    assert codes(run(granular, agreement())) == {ReasonCode.UNKNOWN_MARKING}


def test_object_type_filter() -> None:
    a = agreement(object_types=["indicator", "sighting"])
    assert run(indicator(), a).allow
    report = indicator().model_copy(update={"object_type": "report"})
    assert codes(run(report, a)) == {ReasonCode.OBJECT_TYPE_NOT_ALLOWED}


def test_observable_type_filter_requires_every_observable_listed() -> None:
    a = agreement(observable_types=["url", "domain-name"])
    assert run(indicator(observables=("url", "domain-name")), a).allow
    assert codes(run(indicator(observables=("url", "file")), a)) == {
        ReasonCode.OBSERVABLE_TYPE_NOT_ALLOWED
    }
    # No observables at all is ambiguous: fail closed unless the agreement says "*".
    assert codes(run(indicator(observables=()), a)) == {ReasonCode.OBSERVABLE_TYPE_NOT_ALLOWED}
    assert run(indicator(observables=()), agreement()).allow


def test_labels_any_and_all() -> None:
    any_of = agreement(labels={"mode": "any", "values": ["Phishing", "fraud"]})
    assert run(indicator(labels=["phishing"]), any_of).allow
    assert run(indicator(indicator_types=["fraud"]), any_of).allow
    assert codes(run(indicator(labels=["botnet"]), any_of)) == {ReasonCode.LABELS_NOT_MATCHED}
    all_of = agreement(labels={"mode": "all", "values": ["phishing", "fraud"]})
    assert run(indicator(labels=["phishing"], indicator_types=["fraud"]), all_of).allow
    assert codes(run(indicator(labels=["phishing"]), all_of)) == {ReasonCode.LABELS_NOT_MATCHED}
    only_labels = agreement(labels={"mode": "any", "values": ["fraud"], "fields": ["labels"]})
    assert not run(indicator(indicator_types=["fraud"]), only_labels).allow


def test_minimum_confidence() -> None:
    a = agreement(min_confidence=70)
    assert run(indicator(confidence=70), a).allow
    assert codes(run(indicator(confidence=69), a)) == {ReasonCode.CONFIDENCE_BELOW_MINIMUM}
    assert codes(run(indicator(), a)) == {ReasonCode.CONFIDENCE_MISSING}


def test_deny_lists_every_reason_from_every_candidate() -> None:
    a = agreement(id="a-green", tlp_ceiling="green", min_confidence=90)
    b = agreement(id="b-types", object_types=["sighting"])
    d = run(indicator(TLP.AMBER, confidence=10), a, b)
    assert not d.allow
    pairs = {(r.agreement_id, r.code) for r in d.reasons}
    assert pairs == {
        ("a-green", ReasonCode.TLP_ABOVE_CEILING),
        ("a-green", ReasonCode.CONFIDENCE_BELOW_MINIMUM),
        ("b-types", ReasonCode.OBJECT_TYPE_NOT_ALLOWED),
    }


def test_most_permissive_agreement_wins_and_others_are_recorded() -> None:
    anonymous = agreement(id="a-anon", attribution="anonymous")
    pseudonymous = agreement(id="b-pseudo", attribution="pseudonymous")
    attributed_closed = agreement(id="c-attr-closed", onward_sharing=False)
    attributed_open = agreement(id="d-attr-open")
    d = run(indicator(), anonymous, pseudonymous, attributed_closed, attributed_open)
    assert d.agreement_id == "d-attr-open" and d.attribution is Attribution.ATTRIBUTED
    assert set(d.also_allowed_by) == {"a-anon", "b-pseudo", "c-attr-closed"}
    d = run(indicator(), anonymous, pseudonymous)
    assert d.agreement_id == "b-pseudo"
    # A more permissive agreement that denies does not shadow a narrower one that allows.
    green_only = agreement(id="z-attr", tlp_ceiling="green")
    d = run(indicator(TLP.AMBER), anonymous, green_only)
    assert d.allow and d.agreement_id == "a-anon"


def test_ties_break_on_id_whatever_the_order() -> None:
    first, second = agreement(id="aa"), agreement(id="bb")
    assert run(indicator(), first, second).agreement_id == "aa"
    assert run(indicator(), second, first).agreement_id == "aa"


def test_fewer_redactions_is_more_permissive() -> None:
    drops = agreement(id="aa-drops", redaction={"drop_custom_properties": ["x_*"]})
    keeps = agreement(id="zz-keeps")
    assert run(indicator(), drops, keeps).agreement_id == "zz-keeps"


def test_transformations_are_listed() -> None:
    a = agreement(
        attribution="pseudonymous",
        onward_sharing=False,
        redaction={"drop_custom_properties": ["x_*"], "pseudonymise": ["description"]},
    )
    kinds = [t.kind for t in run(indicator(), a).transformations]
    assert kinds == [
        TransformKind.CREATOR_TO_PSEUDONYM,
        TransformKind.DROP_CUSTOM_PROPERTIES,
        TransformKind.PSEUDONYMISE_PROPERTIES,
        TransformKind.MARK_NO_ONWARD_SHARING,
        TransformKind.NEW_OBJECT_ID,
    ]
    assert run(indicator(), agreement()).transformations == ()


def test_index_and_function_agree_and_accept_sets() -> None:
    agreements = AgreementSet(agreements=(agreement(), agreement(id="other", version=1)))
    index = AgreementIndex(agreements, REGISTRY)
    for sub in REGISTRY.orgs:
        assert index.decide(indicator(), CERT, sub, NOW) == decide(
            indicator(), CERT, sub, agreements, NOW, REGISTRY
        )
