# ruff: noqa: E501  (tables of STIX test data read better unwrapped)
"""normalise_submission: identity binding, markings, limits, upgrade, receipts, never raising."""

from __future__ import annotations

import base64

import orjson
import pytest

from schemas.envelope import Reason
from schemas.tlp import TLP
from stixbus.settings import Limits
from tests.helpers.stix_samples import (
    BANK_A,
    CENTRAL_BANK,
    CERT,
    REGISTRY,
    TLP_AMBER_STRICT_OPENCTI,
    TLP_GREEN_1,
    TLP_RED_2,
    TS,
    bundle,
    indicator,
    new_id,
    run,
)


def reasons(outcome) -> list[Reason]:
    return [r.reason for r in outcome.rejections]


def test_accepts_a_bundle_and_fills_in_what_the_bus_knows() -> None:
    obj = indicator("[url:value = 'hxxp://EVIL[.]example/a/../b']")
    outcome = run(bundle(obj))
    assert outcome.dead_letter is None and outcome.rejections == []
    [accepted] = outcome.accepted
    assert accepted.object["created_by_ref"] == CERT.identity_id
    assert accepted.object["pattern"] == obj["pattern"], "the producer's pattern is never rewritten"
    assert accepted.canonical_pattern == "[url:value = 'http://evil.example/b']"
    assert accepted.observable_types == ["url"]
    assert accepted.tlp == CERT.default_tlp and accepted.tlp_inherited
    assert accepted.dedup_key and accepted.modified == TS
    assert outcome.receipt.accepted == 1 and outcome.receipt.accepted_ids == [obj["id"]]


def test_single_object_submission_uses_root_pointers() -> None:
    outcome = run(orjson.dumps(indicator(valid_until="2020-01-01T00:00:00Z")))
    [rejection] = outcome.rejections
    assert rejection.reason == Reason.VALID_UNTIL_NOT_AFTER_VALID_FROM
    assert rejection.pointer == "/valid_until"


def test_equivalent_indicators_share_a_dedup_key() -> None:
    a = run(bundle(indicator("[domain-name:value = 'evil.com']"))).accepted[0]
    b = run(bundle(indicator("[domain-name:value = 'EVIL[.]COM']")), BANK_A).accepted[0]
    assert a.dedup_key == b.dedup_key and a.object_id != b.object_id


def test_one_bad_object_rejects_only_itself() -> None:
    good, bad = indicator(), indicator(valid_until="2024-03-01T10:00:00Z")
    outcome = run(bundle(good, bad, indicator()))
    assert outcome.receipt.accepted == 2 and outcome.receipt.rejected == 1
    [rejection] = outcome.rejections
    assert rejection.object_id == bad["id"]
    assert rejection.pointer == "/objects/1/valid_until"
    assert "valid_from" in rejection.message
    assert outcome.dead_letter is not None and outcome.dead_letter.payload_encoding == "utf-8"


@pytest.mark.parametrize(
    ("change", "reason", "pointer"),
    [
        ({"id": "indicator--123"}, Reason.INVALID_ID, "/objects/0/id"),
        (
            {"id": "malware--6ba7b810-9dad-41d1-80b4-00c04fd430c8"},
            Reason.INVALID_ID,
            "/objects/0/id",
        ),
        ({"created": "2024-03-01 10:00:00"}, Reason.INVALID_TIMESTAMP, "/objects/0/created"),
        ({"created": "2024-03-01T10:00:00Z"}, Reason.INVALID_TIMESTAMP, "/objects/0/created"),
        ({"modified": "2024-02-30T10:00:00.000Z"}, Reason.INVALID_TIMESTAMP, "/objects/0/modified"),
        (
            {"modified": "2024-02-01T10:00:00.000Z"},
            Reason.MODIFIED_BEFORE_CREATED,
            "/objects/0/modified",
        ),
        ({"valid_from": "yesterday"}, Reason.INVALID_TIMESTAMP, "/objects/0/valid_from"),
        ({"pattern": "[domain-name:value = 'x.com'"}, Reason.INVALID_PATTERN, "/objects/0/pattern"),
        ({"pattern": None}, Reason.INVALID_PROPERTY, "/objects/0/pattern"),
        ({"pattern": 42}, Reason.INVALID_PROPERTY, "/objects/0/pattern"),
        ({"spec_version": "2.2"}, Reason.UNSUPPORTED_SPEC_VERSION, "/objects/0/spec_version"),
        ({"confidence": 101}, Reason.INVALID_PROPERTY, "/objects/0/confidence"),
        ({"labels": []}, Reason.INVALID_PROPERTY, "/objects/0/labels"),
        (
            {"object_marking_refs": [new_id("marking-definition")]},
            Reason.UNKNOWN_MARKING,
            "/objects/0/object_marking_refs/0",
        ),
    ],
)
def test_object_rules(change: dict, reason: Reason, pointer: str) -> None:
    obj = indicator(**change)
    outcome = run(bundle(obj))
    assert outcome.accepted == []
    assert outcome.rejections[0].reason == reason
    assert outcome.rejections[0].pointer == pointer
    assert outcome.rejections[0].message


@pytest.mark.parametrize("missing", ["pattern", "valid_from", "pattern_type", "created"])
def test_missing_required_properties(missing: str) -> None:
    obj = indicator()
    del obj[missing]
    [rejection] = run(bundle(obj)).rejections
    assert rejection.reason == Reason.MISSING_PROPERTY
    assert rejection.pointer == f"/objects/0/{missing}"


def test_impersonating_another_member_is_rejected() -> None:
    outcome = run(bundle(indicator(created_by_ref=CERT.identity_id)), BANK_A)
    assert reasons(outcome) == [Reason.IMPERSONATION]
    outcome = run(bundle(indicator(created_by_ref=REGISTRY.bus.identity_id)), BANK_A)
    assert reasons(outcome) == [Reason.IMPERSONATION]
    identity = {
        "type": "identity",
        "spec_version": "2.1",
        "id": CERT.identity_id,
        "created": TS,
        "modified": TS,
        "name": "Fake CERT",
    }
    assert reasons(run(bundle(identity), BANK_A)) == [Reason.IMPERSONATION]


def test_third_party_creators_need_relay_rights() -> None:
    osint = new_id("identity")
    assert reasons(run(bundle(indicator(created_by_ref=osint)), BANK_A)) == [
        Reason.RELAY_NOT_ALLOWED
    ]
    outcome = run(bundle(indicator(created_by_ref=osint)), CERT)
    assert outcome.accepted[0].object["created_by_ref"] == osint


def test_own_created_by_ref_is_kept() -> None:
    outcome = run(bundle(indicator(created_by_ref=BANK_A.identity_id)), BANK_A)
    assert outcome.receipt.accepted == 1


def test_subscriber_only_org_cannot_publish() -> None:
    outcome = run(bundle(indicator()), CENTRAL_BANK)
    assert reasons(outcome) == [Reason.NOT_A_PUBLISHER]
    assert outcome.accepted == [] and outcome.dead_letter is not None


def test_tlp_is_the_strictest_marking_across_versions_and_aliases() -> None:
    obj = indicator(
        object_marking_refs=[TLP_GREEN_1],
        granular_markings=[{"selectors": ["pattern"], "marking_ref": TLP_RED_2}],
    )
    [accepted] = run(bundle(obj)).accepted
    assert accepted.tlp == TLP.RED and not accepted.tlp_inherited
    [accepted] = run(bundle(indicator(object_marking_refs=[TLP_AMBER_STRICT_OPENCTI]))).accepted
    assert accepted.tlp == TLP.AMBER_STRICT


def test_statement_marking_in_the_same_bundle_is_known() -> None:
    statement = {
        "type": "marking-definition", "spec_version": "2.1", "id": new_id("marking-definition"),
        "created": TS, "definition_type": "statement", "definition": {"statement": "Copyright CERT"},
    }  # fmt: skip
    obj = indicator(object_marking_refs=[statement["id"], TLP_GREEN_1])
    outcome = run(bundle(obj, statement))
    assert outcome.receipt.accepted == 2, outcome.rejections
    assert {a.object_id: a.tlp for a in outcome.accepted}[obj["id"]] == TLP.GREEN


def test_repeated_versions_in_one_bundle() -> None:
    obj = indicator()
    changed = {**obj, "name": "other"}
    outcome = run(bundle(obj, obj, changed))
    assert reasons(outcome) == [Reason.DUPLICATE_OBJECT, Reason.VERSION_CONFLICT]
    assert outcome.receipt.accepted == 1 and outcome.receipt.rejected == 2


@pytest.mark.parametrize(
    ("raw", "limits", "reason"),
    [
        (b"\xff\xfe{", Limits(), Reason.INVALID_UTF8),
        (b"{not json", Limits(), Reason.INVALID_JSON),
        (b"[]", Limits(), Reason.NOT_STIX),
        (b'"just a string"', Limits(), Reason.NOT_STIX),
        (b"{}", Limits(), Reason.NOT_STIX),
        (bundle(indicator()), Limits(message_bytes=100), Reason.TOO_LARGE),
        (bundle(indicator(), indicator()), Limits(objects_per_bundle=1), Reason.TOO_MANY_OBJECTS),
        (bundle(indicator(name="x" * 100)), Limits(string_chars=50), Reason.STRING_TOO_LONG),
        (
            bundle(indicator(x_deep={"a": {"b": {"c": 1}}})),
            Limits(nesting_depth=4),
            Reason.TOO_DEEP,
        ),
        (b"[" * 5000 + b"]" * 5000, Limits(), Reason.TOO_DEEP),
        (bundle(indicator(name="a\x00b")), Limits(), Reason.NUL_CHARACTER),
        (
            orjson.dumps({"type": "bundle", "id": "bundle--x", "objects": []}),
            Limits(),
            Reason.INVALID_ID,
        ),
    ],
)
def test_whole_submission_problems(raw: bytes, limits: Limits, reason: Reason) -> None:
    outcome = run(raw, limits=limits)
    assert reasons(outcome) == [reason]
    assert outcome.accepted == [] and outcome.receipt.rejected >= 1
    assert outcome.dead_letter is not None


def test_dead_letter_keeps_non_utf8_payload_as_base64() -> None:
    raw = b"\xff\x00garbage"
    outcome = run(raw)
    assert outcome.dead_letter is not None
    assert outcome.dead_letter.payload_encoding == "base64"
    assert base64.b64decode(outcome.dead_letter.payload) == raw


def test_stix_2_0_bundle_is_upgraded_losslessly() -> None:
    old = {
        "type": "indicator", "id": new_id("indicator"), "created": "2017-01-01T00:00:00Z",
        "modified": "2017-01-01T00:00:00Z", "labels": ["malicious-activity"],
        "pattern": "[domain-name:value = 'old.example']", "valid_from": "2017-01-01T00:00:00Z",
    }  # fmt: skip
    outcome = run(bundle(old, spec_version="2.0"))
    [accepted] = outcome.accepted
    assert accepted.object["spec_version"] == "2.1"
    assert accepted.object["pattern_type"] == "stix"
    assert accepted.object["indicator_types"] == ["malicious-activity"]
    assert "labels" not in accepted.object
    assert accepted.object["created"] == "2017-01-01T00:00:00.000Z"
    assert any("upgraded from STIX 2.0" in w for w in outcome.receipt.warnings)


def test_stix_2_0_malware_is_not_upgraded_by_guessing() -> None:
    old = {
        "type": "malware",
        "id": new_id("malware"),
        "created": "2017-01-01T00:00:00.000Z",
        "modified": "2017-01-01T00:00:00.000Z",
        "labels": ["trojan"],
        "name": "x",
    }
    assert reasons(run(bundle(old, spec_version="2.0"))) == [Reason.UPGRADE_NOT_LOSSLESS]


def test_unrouted_types_pass_after_validation() -> None:
    malware = {
        "type": "malware",
        "spec_version": "2.1",
        "id": new_id("malware"),
        "created": TS,
        "modified": TS,
        "name": "Emotet",
        "is_family": True,
    }
    outcome = run(bundle(malware))
    assert outcome.receipt.accepted == 1
    del malware["is_family"]
    outcome = run(bundle(malware))
    assert set(reasons(outcome)) == {Reason.INVALID_PROPERTY}
    assert outcome.receipt.rejected == 1
    assert any("is_family" in r.message for r in outcome.rejections)


def test_scos_get_canonical_ids() -> None:
    sco = {
        "type": "domain-name",
        "spec_version": "2.1",
        "id": new_id("domain-name"),
        "value": "EVIL.com",
    }
    [accepted] = run(bundle(sco)).accepted
    assert accepted.observable_types == ["domain-name"]
    import stix2

    assert accepted.canonical_sco_id == stix2.DomainName(value="evil.com").id
    assert "created_by_ref" not in accepted.object


def test_homograph_warning_on_receipt() -> None:
    outcome = run(bundle(indicator("[domain-name:value = '\u0430pple.com']")))
    assert outcome.receipt.accepted == 1
    assert any("homograph" in w for w in outcome.receipt.warnings)


def test_never_raises_internal_errors_become_rejections(monkeypatch: pytest.MonkeyPatch) -> None:
    from stixbus.core.normalise import envelope

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(envelope, "decode_payload", explode)
    raw = bundle(indicator())
    outcome = run(raw)
    assert reasons(outcome) == [Reason.INTERNAL_ERROR]
    assert "boom" in outcome.rejections[0].message
    assert outcome.dead_letter is not None and outcome.dead_letter.payload == raw.decode()


def test_not_bytes_still_gives_a_receipt() -> None:
    outcome = run("not bytes")  # type: ignore[arg-type]
    assert outcome.receipt.rejected == 1 and outcome.rejections
