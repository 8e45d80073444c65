"""Agreement schema: validation rules, YAML loader errors, shipped examples, JSON Schema export."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.agreement import (
    SCHEMA_PATH,
    Agreement,
    AgreementSet,
    Attribution,
    agreements_from_yaml,
    load_agreements,
    render_json_schema,
)
from schemas.org import Sector
from schemas.tlp import TLP
from stixbus.core.lint import Severity, check_agreements
from tests.helpers.agreements import BASE
from tests.helpers.paths import REPO_ROOT, example_registry

EXAMPLES = REPO_ROOT / "deploy" / "agreements.yaml"


def base(**overrides: object) -> dict[str, object]:
    """Raw agreement data (not validated: some tests make it invalid on purpose)."""
    return {
        **BASE,
        "id": "cert-to-banks",
        "purpose": {"code": "fraud-prevention", "text": "Protect customers."},
        "object_types": ["indicator"],
        **overrides,
    }


def test_minimal_agreement_parses_names_and_dates() -> None:
    agreement = Agreement.model_validate(base(tlp_ceiling="TLP:AMBER"))
    assert agreement.tlp_ceiling is TLP.AMBER
    assert agreement.term.valid_from == datetime(2026, 1, 1, tzinfo=UTC)
    assert agreement.subscriber_sectors == {Sector.BANK}
    assert agreement.named_publishers == {"cert"}
    assert agreement.model_dump(mode="json")["tlp_ceiling"] == "amber"


def test_agreement_is_frozen() -> None:
    agreement = Agreement.model_validate(base())
    with pytest.raises(ValidationError):
        agreement.version = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"surprise": 1}, "surprise"),
        ({"version": 0}, "version"),
        ({"tlp_ceiling": "purple"}, "unknown TLP"),
        ({"subscribers": ["sector:banks"]}, "subscribers"),
        ({"subscribers": ["Bank A"]}, "subscribers"),
        ({"subscribers": []}, "subscribers"),
        ({"object_types": []}, "object_types"),
        ({"object_types": ["*", "indicator"]}, "already means any"),
        ({"publishers": ["cert", "cert"]}, "twice"),
        ({"term": {"valid_from": "2027-01-01", "valid_until": "2026-01-01"}}, "not after"),
        ({"term": {"valid_from": "2026-01-01T00:00:00", "valid_until": "2027-01-01"}}, "timezone"),
        ({"term": {"valid_from": "2026-01-01"}}, "valid_until"),
        ({"purpose": {"code": "marketing", "text": "x"}}, "purpose"),
        ({"attribution": "secret"}, "attribution"),
        ({"min_confidence": 101}, "min_confidence"),
        ({"redaction": {"drop_custom_properties": ["description"]}}, "drop_custom_properties"),
        ({"redaction": {"pseudonymise": ["created_by_ref"]}}, "attribution"),
        ({"redaction": {"pseudonymise": ["pattern"]}}, "cannot be pseudonymised"),
        (
            {"redaction": {"drop_custom_properties": ["x_*"], "pseudonymise": ["x_customer"]}},
            "both dropped and pseudonymised",
        ),
        ({"labels": {"mode": "any", "values": []}}, "values"),
        ({"labels": {"mode": "some", "values": ["fraud"]}}, "mode"),
    ],
)
def test_invalid_agreements_are_rejected(override: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        Agreement.model_validate(base(**override))
    assert needle in str(excinfo.value)


def test_agreement_set_rejects_duplicate_ids() -> None:
    with pytest.raises(ValidationError, match="twice"):
        AgreementSet.model_validate({"agreements": [base(), base()]})


def test_loader_error_names_file_agreement_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "agreements.yaml"
    bad.write_text(
        "agreements:\n"
        "  - id: fine\n    version: 1\n"
        "    term: {valid_from: 2026-01-01, valid_until: 2027-01-01}\n"
        "    purpose: {code: incident-response, text: x}\n"
        "    publishers: [cert]\n    subscribers: [bank-a]\n    tlp_ceiling: chartreuse\n"
        "    object_types: ['*']\n    observable_types: ['*']\n"
        "    attribution: attributed\n    onward_sharing: true\n"
    )
    with pytest.raises(ValueError) as excinfo:
        load_agreements(bad)
    message = str(excinfo.value)
    assert str(bad) in message
    assert "agreements[0] (id fine).tlp_ceiling" in message


def test_loader_reports_unreadable_and_non_yaml(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read agreements file"):
        load_agreements(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="not valid YAML"):
        agreements_from_yaml("agreements: [", "inline")


def test_shipped_examples_load_and_lint_clean() -> None:
    agreements = load_agreements(EXAMPLES)
    assert len(agreements) >= 7
    assert {a.attribution for a in agreements} == set(Attribution)
    registry = example_registry()
    findings = check_agreements(agreements, registry, datetime(2026, 6, 1, tzinfo=UTC))
    assert [f for f in findings if f.severity is Severity.ERROR] == []


def test_committed_json_schema_is_up_to_date() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_json_schema(), (
        "docs/agreement.schema.json is stale: run `.venv/bin/python -m schemas.agreement`"
    )


def test_json_schema_validates_shipped_examples() -> None:
    import jsonschema
    import yaml

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    data = json.loads(json.dumps(yaml.safe_load(EXAMPLES.read_text()), default=str))
    jsonschema.validate(data, schema)
