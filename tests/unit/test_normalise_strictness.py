# ruff: noqa: E501  (tables of STIX test data read better unwrapped)
"""Ingest strictness (issue 17): nested bundles, duplicate JSON keys, references of the wrong
type or form, upper-case UUIDs and patterns too complex for the grammar each get a reason code,
never an unchecked acceptance; plus generated inputs of these shapes against the validator."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.envelope import Reason
from schemas.tlp import TLP
from stixbus.core.pattern import MAX_PATTERN_NESTING
from stixbus.core.payload import InputLimits, decode_payload
from tests.helpers.stix_samples import (
    BANK_A,
    CERT,
    TLP_GREEN_1,
    TLP_RED_2,
    TS,
    bundle,
    indicator,
    new_id,
    run,
)
from tests.unit.test_normalise_differential import base_objects, oasis_accepts


def reasons(raw: bytes, publisher: Any = CERT) -> list[Reason]:
    return [r.reason for r in run(raw, publisher).rejections]


def malware(**extra: Any) -> dict[str, Any]:
    return {"type": "malware", "spec_version": "2.1", "id": new_id("malware"), "created": TS,
            "modified": TS, "name": "Emotet", "is_family": True, **extra}  # fmt: skip


# --- nested bundles ----------------------------------------------------------------------------
def test_a_bundle_inside_a_bundle_is_rejected_and_its_red_indicator_never_leaves_at_green() -> None:
    """The attack: a RED indicator wrapped in an inner bundle used to be accepted as one opaque
    object and routed at the publisher's default TLP (GREEN for bank-a)."""
    red = indicator(object_marking_refs=[TLP_RED_2])
    inner = {"type": "bundle", "id": new_id("bundle"), "objects": [red]}
    plain = indicator()
    outcome = run(bundle(inner, plain), BANK_A)
    assert [r.reason for r in outcome.rejections] == [Reason.NESTED_BUNDLE]
    assert outcome.rejections[0].pointer == "/objects/0"
    assert "directly in the outer bundle" in outcome.rejections[0].message
    assert [r.object_id for r in outcome.accepted] == [plain["id"]]
    assert all(r.object_type != "bundle" for r in outcome.accepted)
    sent_alone = run(bundle(red), BANK_A)  # the same indicator sent properly keeps its RED
    assert sent_alone.accepted[0].tlp == TLP.RED


# --- duplicate keys ----------------------------------------------------------------------------
PLAIN = {"type": "indicator", "spec_version": "2.1", "id": "indicator--6ba7b810-9dad-41d1-80b4-00c04fd430c9",
         "created": TS, "modified": TS, "pattern": "[domain-name:value = 'a.example']",
         "pattern_type": "stix", "valid_from": "2024-03-01T10:00:00Z"}  # fmt: skip


def with_duplicate(obj: dict[str, Any], key: str, value: Any) -> bytes:
    """`obj` as JSON with `key` written a second time (first) — what orjson silently merges."""
    return b'{"' + key.encode() + b'":' + orjson.dumps(value) + b"," + orjson.dumps(obj)[1:]


@pytest.mark.parametrize(
    "raw",
    [
        # the RED marking would vanish behind the GREEN one
        with_duplicate(
            {**PLAIN, "object_marking_refs": [TLP_GREEN_1]}, "object_marking_refs", [TLP_RED_2]
        ),
        with_duplicate(
            {"type": "bundle", "id": new_id("bundle"), "objects": [PLAIN]}, "type", "indicator"
        ),
        b'{"type":"bundle","id":"bundle--6ba7b810-9dad-41d1-80b4-00c04fd430c8","objects":['
        + with_duplicate(PLAIN, "pattern", "[domain-name:value = 'b.example']")
        + b"]}",
        # the key spelled with an escaped ':' the second time
        b'{"type":"bundle","id":"bundle--6ba7b810-9dad-41d1-80b4-00c04fd430c8","objects":['
        + orjson.dumps({**PLAIN, "x_a:b": 1})[:-1]
        + b',"x_a\\u003ab":2}]}',
    ],
    ids=["marking", "bundle type", "pattern", "escaped colon"],
)
def test_duplicate_keys_reject_the_whole_submission(raw: bytes) -> None:
    outcome = run(raw, BANK_A)
    assert [r.reason for r in outcome.rejections] == [Reason.DUPLICATE_KEY]
    assert outcome.accepted == [] and outcome.dead_letter is not None
    assert "send each key once" in outcome.rejections[0].message


def test_colons_inside_strings_and_spaced_json_are_not_duplicates() -> None:
    obj = {**PLAIN, "name": "a: b :: c", "description": 'x":1', "x_map": {"k:": "v:", "k": ":"}}
    for raw in (
        orjson.dumps(obj),
        json.dumps(obj, indent=2).encode(),
        json.dumps(obj, separators=(" , ", " : ")).encode(),
    ):
        assert reasons(raw) == [], raw


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(alphabet=st.sampled_from('ab:"\\ {}[],\u003a'), max_size=6),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet="ab:", max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)


def _dumps_duplicating(value: Any, done: list[bool]) -> str:
    """JSON text of `value` with the first key of its first non-empty object repeated."""
    if isinstance(value, dict):
        parts = [f"{json.dumps(k)}:{_dumps_duplicating(v, done)}" for k, v in value.items()]
        if parts and not done:
            done.append(True)
            parts.append(parts[0])
        return "{" + ",".join(parts) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dumps_duplicating(v, done) for v in value) + "]"
    return json.dumps(value)


@settings(max_examples=300, deadline=None)
@given(
    value=st.dictionaries(st.text(alphabet="ab:", max_size=3), JSON_VALUES, min_size=1, max_size=4),
    ascii_only=st.booleans(),
)
def test_the_duplicate_key_detector_is_exact(value: dict[str, Any], ascii_only: bool) -> None:
    limits = InputLimits()
    clean = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert decode_payload(clean, limits) == value
    done: list[bool] = []
    duplicated = _dumps_duplicating(value, done).encode()
    problem = decode_payload(duplicated, limits)
    assert getattr(problem, "reason", None) == Reason.DUPLICATE_KEY, duplicated


# --- references and identifiers ----------------------------------------------------------------
def test_created_by_ref_must_be_an_identity() -> None:
    for obj in (
        indicator(created_by_ref=new_id("malware")),
        malware(created_by_ref=new_id("indicator")),
    ):
        outcome = run(bundle(obj))
        assert [r.reason for r in outcome.rejections] == [Reason.WRONG_REF_TYPE], obj["type"]
        assert outcome.rejections[0].pointer == "/objects/0/created_by_ref"


@pytest.mark.parametrize(
    ("obj", "reason", "pointer"),
    [
        (indicator(id="indicator--" + str(uuid.uuid4()).upper()), Reason.INVALID_ID, "/id"),
        (malware(id="malware--" + str(uuid.uuid4()).upper()), Reason.INVALID_ID, "/id"),
        (
            indicator(created_by_ref="identity--" + str(uuid.uuid4()).upper()),
            Reason.INVALID_ID,
            "/created_by_ref",
        ),
        (
            {
                "type": "relationship",
                "spec_version": "2.1",
                "id": new_id("relationship"),
                "created": TS,
                "modified": TS,
                "relationship_type": "indicates",
                "source_ref": "indicator--" + str(uuid.uuid4()).upper(),
                "target_ref": new_id("malware"),
            },
            Reason.INVALID_ID,
            "/source_ref",
        ),
        (
            {
                "type": "observed-data",
                "spec_version": "2.1",
                "id": new_id("observed-data"),
                "created": TS,
                "modified": TS,
                "first_observed": TS,
                "last_observed": TS,
                "number_observed": 1,
                "object_refs": [new_id("ipv4-addr"), "ipv4-addr--1"],
            },
            Reason.INVALID_ID,
            "/object_refs/1",
        ),
        (
            {
                "type": "sighting",
                "spec_version": "2.1",
                "id": new_id("sighting"),
                "created": TS,
                "modified": TS,
                "sighting_of_ref": new_id("indicator"),
                "where_sighted_refs": [new_id("malware")],
            },
            Reason.WRONG_REF_TYPE,
            "/where_sighted_refs/0",
        ),
        (malware(x_seen_ref="not an id"), Reason.INVALID_ID, "/x_seen_ref"),
        (malware(object_refs=new_id("indicator")), Reason.INVALID_PROPERTY, "/object_refs"),
    ],
    ids=[
        "upper-case id",
        "upper-case id (full checks)",
        "upper-case creator",
        "upper-case ref",
        "malformed ref in a list",
        "sighted at a malware",
        "custom ref",
        "refs not a list",
    ],
)
def test_malformed_and_mistyped_references(
    obj: dict[str, Any], reason: Reason, pointer: str
) -> None:
    outcome = run(bundle(obj))
    assert [r.reason for r in outcome.rejections] == [reason]
    assert outcome.rejections[0].pointer == "/objects/0" + pointer


# --- patterns ----------------------------------------------------------------------------------
def test_deep_and_long_patterns_get_advice_not_a_recursion_error() -> None:
    deep = "(" * (MAX_PATTERN_NESTING + 5) + "[process:pid = 4]" + ")" * (MAX_PATTERN_NESTING + 5)
    long = (
        "[" + " AND ".join(f"process:pid = {i}" for i in range(1200)) + "]"
    )  # past Python's default recursion limit
    for pattern in (deep, long):
        outcome = run(bundle(indicator(pattern)))
        assert [r.reason for r in outcome.rejections] == [Reason.PATTERN_TOO_COMPLEX]
        message = outcome.rejections[0].message
        assert "RecursionError" not in message and "Split it into several indicators" in message
    nested = "(" * 40 + "[process:pid = 4]" + ")" * 40  # deep but within the bounds: checked
    assert reasons(bundle(indicator(nested))) == []


# --- generated inputs of these shapes against the validator -------------------------------------
BASES = [obj for obj in base_objects() if obj["type"] != "marking-definition"]


def _refs_of(obj: dict[str, Any]) -> list[str]:
    return [k for k in obj if k.endswith(("_ref", "_refs")) or k == "id"]


@st.composite
def mutated_objects(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """(object, wrapped in an inner bundle): a valid base with drops, re-typed, malformed or
    upper-case references, a creator of another type."""
    obj = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "upper", "retype", "malform", "creator"]))
        names = _refs_of(obj)
        if action == "drop":
            obj.pop(draw(st.sampled_from(sorted(obj))), None)
        elif action == "creator":
            obj["created_by_ref"] = new_id(
                draw(st.sampled_from(["identity", "malware", "indicator", "location"]))
            )
        elif names:
            name = draw(st.sampled_from(names))
            value = obj[name]
            one = value[0] if isinstance(value, list) and value else value
            if not isinstance(one, str):
                continue
            if action == "upper":
                new = one.partition("--")[0] + "--" + one.partition("--")[2].upper()
            elif action == "retype":
                new = new_id(
                    draw(
                        st.sampled_from(
                            ["identity", "malware", "indicator", "location", "marking-definition"]
                        )
                    )
                )
            else:
                new = draw(
                    st.sampled_from(
                        [one[:-1], one + "0", one.replace("--", "-"), "", one.replace("-4", "-6")]
                    )
                )
            obj[name] = [new, *value[1:]] if isinstance(value, list) else new
    return obj, draw(st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated_objects())
def test_generated_shapes_the_bus_accepts_are_valid_for_the_oasis_validator(
    case: tuple[dict[str, Any], bool],
) -> None:
    obj, nested = case
    if nested:
        outcome = run(bundle({"type": "bundle", "id": new_id("bundle"), "objects": [obj]}))
        assert outcome.accepted == [] and [r.reason for r in outcome.rejections] == [
            Reason.NESTED_BUNDLE
        ]
        return
    outcome = run(bundle(obj))
    if outcome.accepted:
        delivered = outcome.accepted[0].object
        # As in test_normalise_differential: an object without spec_version '2.1' is read as
        # STIX 2.0 and upgraded; what the bus delivers must pass the validator either way.
        is_21 = obj.get("spec_version") == "2.1"
        assert oasis_accepts(delivered) and (oasis_accepts(obj) or not is_21), (obj, delivered)
    else:
        assert outcome.rejections and all(
            r.reason != Reason.INTERNAL_ERROR for r in outcome.rejections
        ), outcome.rejections
