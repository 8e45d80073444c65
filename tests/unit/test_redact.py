"""Redaction and attribution: what each subscriber receives, valid STIX under every mode."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from stix2validator import ValidationOptions, validate_instance

from schemas.agreement import Agreement
from schemas.envelope import NormalizedObject
from schemas.tlp import TLP
from stixbus.core.decide import decide
from stixbus.core.redact import (
    PSEUDONYM_PREFIX,
    SOURCE_REFERENCE_NAME,
    apply_transformations,
    bus_identity,
    companion_objects,
    derived_object_id,
    no_onward_sharing_marking,
    no_onward_sharing_marking_id,
    pseudonym_identity,
    pseudonym_identity_id,
)
from tests.helpers.agreements import make_agreement
from tests.helpers.paths import example_registry

REGISTRY = example_registry()
NOW = datetime(2026, 6, 1, tzinfo=UTC)
BANK_A, BANK_B = REGISTRY.get("bank-a"), REGISTRY.get("bank-b")
OPTIONS = ValidationOptions(version="2.1")

PRODUCER_INDICATOR: dict[str, Any] = {
    "type": "indicator",
    "spec_version": "2.1",
    "id": "indicator--1f1b0c1e-7f6e-4d2a-9b0f-3f6c1f2e9a11",
    "created_by_ref": BANK_A.identity_id,
    "created": "2026-05-01T10:00:00.000Z",
    "modified": "2026-05-02T10:00:00.000Z",
    "name": "Mule account phishing kit",
    "description": "Reported by customer 4711 at branch Nord",
    "indicator_types": ["malicious-activity"],
    "labels": ["fraud"],
    "pattern": "[url:value = 'https://pay-alpha.example/login']",
    "pattern_type": "stix",
    "valid_from": "2026-05-01T10:00:00Z",
    "confidence": 80,
    "object_marking_refs": [TLP.AMBER.marking_id],
    "x_alpha_case_id": "CASE-2026-0042",
    "x_alpha_customer": "4711",
}

PRODUCER_SIGHTING: dict[str, Any] = {
    "type": "sighting",
    "spec_version": "2.1",
    "id": "sighting--6b3c6d3a-0c0a-4c42-8f0e-2a7e7d1d7b55",
    "created_by_ref": BANK_A.identity_id,
    "created": "2026-05-03T10:00:00.000Z",
    "modified": "2026-05-03T10:00:00.000Z",
    "sighting_of_ref": "indicator--1f1b0c1e-7f6e-4d2a-9b0f-3f6c1f2e9a11",
    "where_sighted_refs": [BANK_A.identity_id],
    "count": 3,
    "labels": ["fraud"],
    "object_marking_refs": [TLP.GREEN.marking_id],
}


def agreement(**overrides: Any) -> Agreement:
    defaults = {
        "id": "banks-exchange",
        "purpose": {"code": "fraud-prevention", "text": "Fraud."},
        "publishers": ["sector:bank"],
    }
    return make_agreement(**{**defaults, **overrides})


def deliver(stix: dict[str, Any], a: Agreement) -> dict[str, Any]:
    normalized = NormalizedObject(
        submission_id="s",
        publisher="bank-a",
        received_at=NOW,
        published_at=NOW,
        object_id=stix["id"],
        object_type=stix["type"],
        modified=stix.get("modified"),
        tlp=TLP.AMBER,
        object=stix,
    )
    decision = decide(normalized, BANK_A, BANK_B, [a], NOW, REGISTRY)
    assert decision.allow, decision.reasons
    before = copy.deepcopy(stix)
    out = apply_transformations(stix, decision, a, REGISTRY)
    assert stix == before, "apply_transformations must not modify its input"
    return out


def assert_valid(obj: dict[str, Any]) -> None:
    result = validate_instance(obj, OPTIONS)
    assert result.is_valid, [str(e) for e in result.errors]


MODES = [
    agreement(),
    agreement(onward_sharing=False),
    agreement(redaction={"drop_custom_properties": ["x_*"]}),
    agreement(attribution="pseudonymous", redaction={"pseudonymise": ["description"]}),
    agreement(
        attribution="anonymous",
        onward_sharing=False,
        redaction={"drop_custom_properties": ["x_alpha_customer"]},
    ),
]


@pytest.mark.parametrize("a", MODES, ids=lambda a: f"{a.attribution}-{a.onward_sharing}")
@pytest.mark.parametrize("stix", [PRODUCER_INDICATOR, PRODUCER_SIGHTING], ids=["ind", "sight"])
def test_delivered_objects_and_companions_are_valid_stix(a: Agreement, stix: dict) -> None:
    out = deliver(stix, a)
    assert_valid(out)
    assert out["modified"] == stix["modified"] and out["created"] == stix["created"]
    decision_stub = decide(
        NormalizedObject(
            submission_id="s",
            publisher="bank-a",
            received_at=NOW,
            published_at=NOW,
            object_id=stix["id"],
            object_type=stix["type"],
            tlp=TLP.AMBER,
            object=stix,
        ),
        BANK_A,
        BANK_B,
        [a],
        NOW,
        REGISTRY,
    )
    for companion in companion_objects(decision_stub, a, REGISTRY):
        assert_valid(companion)


def test_attributed_unchanged_keeps_everything() -> None:
    out = deliver(PRODUCER_INDICATOR, agreement())
    assert out == PRODUCER_INDICATOR


def test_drop_all_custom_properties_changes_id_and_records_source() -> None:
    a = agreement(redaction={"drop_custom_properties": ["x_*"]})
    out = deliver(PRODUCER_INDICATOR, a)
    assert not [k for k in out if k.startswith("x_")]
    assert out["id"] == derived_object_id(PRODUCER_INDICATOR["id"], a, REGISTRY)
    assert out["id"] != PRODUCER_INDICATOR["id"]
    assert out["created_by_ref"] == BANK_A.identity_id
    assert {
        "source_name": SOURCE_REFERENCE_NAME,
        "external_id": PRODUCER_INDICATOR["id"],
    }.items() <= out["external_references"][-1].items()


def test_drop_named_custom_property_only() -> None:
    out = deliver(
        PRODUCER_INDICATOR, agreement(redaction={"drop_custom_properties": ["x_alpha_customer"]})
    )
    assert "x_alpha_customer" not in out and out["x_alpha_case_id"] == "CASE-2026-0042"


def test_pseudonymous_replaces_creator_and_where_sighted_stably() -> None:
    a = agreement(attribution="pseudonymous", redaction={"pseudonymise": ["description"]})
    pseudonym = pseudonym_identity_id("banks-exchange", "bank-a", REGISTRY)
    out = deliver(PRODUCER_INDICATOR, a)
    assert out["created_by_ref"] == pseudonym
    assert out["description"].startswith(PSEUDONYM_PREFIX) and "4711" not in out["description"]
    assert "external_references" not in out, "a source id would re-identify the producer"
    assert deliver(PRODUCER_INDICATOR, a) == out, "pseudonyms are deterministic"
    sighting = deliver(PRODUCER_SIGHTING, a)
    assert sighting["created_by_ref"] == pseudonym and sighting["where_sighted_refs"] == [pseudonym]
    assert pseudonym_identity("banks-exchange", "bank-a", REGISTRY)["id"] == pseudonym
    assert pseudonym != pseudonym_identity_id("banks-exchange", "bank-b", REGISTRY)
    assert pseudonym != pseudonym_identity_id("other-agreement", "bank-a", REGISTRY)


def test_anonymous_shows_only_the_bus() -> None:
    a = agreement(attribution="anonymous")
    out = deliver(PRODUCER_SIGHTING, a)
    assert out["created_by_ref"] == REGISTRY.bus.identity_id
    assert out["where_sighted_refs"] == [REGISTRY.bus.identity_id]
    assert BANK_A.identity_id not in str(out)
    assert PRODUCER_SIGHTING["id"] not in str(out)
    assert bus_identity(REGISTRY)["id"] == REGISTRY.bus.identity_id


def test_no_onward_sharing_adds_the_statement_marking() -> None:
    out = deliver(PRODUCER_INDICATOR, agreement(onward_sharing=False))
    marking = no_onward_sharing_marking_id(REGISTRY)
    assert out["object_marking_refs"] == [TLP.AMBER.marking_id, marking]
    assert no_onward_sharing_marking(REGISTRY)["id"] == marking
    assert_valid(no_onward_sharing_marking(REGISTRY))


def test_derived_id_is_stable_across_versions_and_differs_per_settings() -> None:
    a = agreement(attribution="anonymous")
    v1 = deliver(PRODUCER_INDICATOR, a)
    v2 = deliver({**PRODUCER_INDICATOR, "modified": "2026-05-09T00:00:00.000Z", "revoked": True}, a)
    assert v1["id"] == v2["id"] and v2["revoked"] is True
    other = agreement(attribution="anonymous", onward_sharing=False)
    assert derived_object_id(PRODUCER_INDICATOR["id"], other, REGISTRY) != v1["id"]


def test_refuses_a_deny_or_a_different_agreement() -> None:
    a = agreement()
    normalized = NormalizedObject(
        submission_id="s",
        publisher="bank-a",
        received_at=NOW,
        published_at=NOW,
        object_id=PRODUCER_INDICATOR["id"],
        object_type="indicator",
        tlp=TLP.RED,
        object=PRODUCER_INDICATOR,
    )
    denied = decide(normalized, BANK_A, BANK_B, [a], NOW, REGISTRY)
    with pytest.raises(ValueError, match="call decide"):
        apply_transformations(PRODUCER_INDICATOR, denied, a, REGISTRY)


def test_structured_values_are_withheld_not_leaked() -> None:
    a = agreement(redaction={"pseudonymise": ["x_alpha_details"]})
    out = deliver({**PRODUCER_INDICATOR, "x_alpha_details": {"iban": "DE00"}}, a)
    assert "x_alpha_details" not in out


def test_sco_keeps_its_id() -> None:
    sco = {
        "type": "url",
        "spec_version": "2.1",
        "id": "url--4f8e1a6f-d1a4-5b3b-9b1d-2b1d8d9b0a71",
        "value": "https://x.example/",
        "x_alpha_case_id": "C1",
    }
    out = deliver(
        sco, agreement(attribution="anonymous", redaction={"drop_custom_properties": ["x_*"]})
    )
    assert out["id"] == sco["id"] and "x_alpha_case_id" not in out


def _with_contributor_text(stix: dict[str, Any]) -> dict[str, Any]:
    return {
        **stix,
        "description": "Seen by Bank A's fraud team at branch Nord",
        "external_references": [{"source_name": "bank-a-case", "external_id": "CASE-1"}],
    }


@pytest.mark.parametrize("attribution", ["pseudonymous", "anonymous"])
def test_non_attributed_copies_drop_contributor_text_by_default(attribution: str) -> None:
    agreement = make_agreement(publishers=["bank-a"], attribution=attribution)
    out = deliver(_with_contributor_text(PRODUCER_SIGHTING), agreement)
    assert "description" not in out and "external_references" not in out
    assert not validate_instance(out, OPTIONS).errors


def test_the_agreement_can_keep_contributor_text() -> None:
    agreement = make_agreement(
        publishers=["bank-a"],
        attribution="anonymous",
        redaction={"keep_contributor_text": True},
    )
    out = deliver(_with_contributor_text(PRODUCER_SIGHTING), agreement)
    assert out["description"].startswith("Seen by Bank A")
    assert out["external_references"][0]["source_name"] == "bank-a-case"


def test_pseudonymised_free_text_stays_as_its_pseudonym() -> None:
    agreement = make_agreement(
        publishers=["bank-a"],
        attribution="pseudonymous",
        redaction={"pseudonymise": ["description"]},
    )
    out = deliver(_with_contributor_text(PRODUCER_SIGHTING), agreement)
    assert out["description"].startswith(PSEUDONYM_PREFIX)
    assert "external_references" not in out


def test_attributed_copies_keep_contributor_text() -> None:
    agreement = make_agreement(publishers=["bank-a"])
    out = deliver(_with_contributor_text(PRODUCER_SIGHTING), agreement)
    assert out["description"].startswith("Seen by Bank A")
