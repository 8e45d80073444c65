# ruff: noqa: E501  (tables of STIX test data read better unwrapped)
"""The speed-ups of the normalise stage change no decision and no output.

- The plain-indicator fast path (`_accept_plain_indicator`) gives exactly the outcome of the full
  path (`_accept_object`: pydantic model, OASIS backstop...) on valid and broken indicators.
- Its cheap checks are sufficient conditions of the full ones (timestamps, ids).
- The lean `NormalizedObject` construction equals the validated model.
- The raw-bytes shortcut of the limits walk reports what the full walk reports.
- The faster canonicalisers (IPv6 via inet_pton/inet_ntop, the defang hint, the dedup key) give
  the results of the straightforward ones.
"""

from __future__ import annotations

import gc
import ipaddress
import itertools
import uuid
from datetime import datetime
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.envelope import NormalizedObject
from schemas.stix import (
    PLAIN_TIMESTAMP_MILLIS_RE,
    PLAIN_TIMESTAMP_RE,
    check_timestamp,
    check_timestamp_millis,
)
from stixbus.core.canonical import (
    _DEFANG_HINT,
    CanonicalError,
    _looks_defanged,
    canonical_ip,
    dedup_key,
)
from stixbus.core.normalise import checks, envelope
from stixbus.core.payload import _check_shape_limits, _check_shape_quickly
from stixbus.settings import Limits
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


def run_both(raw: bytes, publisher=CERT):
    fast = run(raw, publisher)
    with mock.patch.object(envelope, "accept_plain_indicator", lambda *args: None):
        full = run(raw, publisher)
    return fast, full


def assert_same_outcome(raw: bytes, publisher=CERT) -> None:
    fast, full = run_both(raw, publisher)
    assert fast.receipt == full.receipt
    assert fast.rejections == full.rejections
    assert fast.dead_letter == full.dead_letter
    assert [a.model_dump() for a in fast.accepted] == [a.model_dump() for a in full.accepted]


# --- values chosen to sit on the edges of the fast path's checks --------------------------------
TIMESTAMPS = [
    TS, "2024-03-01T10:00:00Z", "2024-03-01T10:00:00.5Z", "2024-03-01T10:00:00.123456Z",
    "2024-02-29T10:00:00.000Z", "2023-02-29T10:00:00.000Z", "2024-02-28T23:59:59.999Z",
    "2024-04-30T10:00:00.000Z", "2024-04-31T10:00:00.000Z", "2024-01-31T10:00:00.000Z",
    "0000-01-15T10:00:00.000Z", "0000-01-30T10:00:00.000Z", "2024-03-01T10:00:60.000Z",
    "2024-03-01T24:00:00.000Z", "2024-03-01T10:00:00.000z", "2024-03-01 10:00:00.000Z",
    "2024-03-01T10:00:00.000Z\n", "2024-03-01T10:00:00.000+00:00", "2024-13-01T10:00:00.000Z",
    "2024-03-01T09:59:59.999Z", "2024-03-01T10:00:00.0001Z", "2024-03-01T10:00:00.000000Z",
    "2025-01-01T00:00:00Z", "2020-01-01T00:00:00Z", "", 20240301, None,
]  # fmt: skip
IDS = [
    new_id("indicator"), "indicator--6BA7B810-9DAD-41D1-80B4-00C04FD430C8",
    "indicator--6ba7b810-9dad-01d1-80b4-00c04fd430c8", "indicator--6ba7b810-9dad-41d1-70b4-00c04fd430c8",
    "indicator--6ba7b810-9dad-41d1-80b4-00c04fd430c8\n", "malware--6ba7b810-9dad-41d1-80b4-00c04fd430c8",
    "Indicator--6ba7b810-9dad-41d1-80b4-00c04fd430c8", "indicator--not-a-uuid", 7, None,
]  # fmt: skip
REFS = [
    "identity--6ba7b810-9dad-41d1-80b4-00c04fd430c8", CERT.identity_id, BANK_A.identity_id,
    "identity--6ba7b810-9dad-41d1-80b4-00c04fd430c8\n", "identity--nope", "", 1,
]  # fmt: skip
MARKINGS = [
    [TLP_RED_2], [TLP_GREEN_1, TLP_RED_2], [], [TLP_RED_2 + "\n"], ["marking-definition--6ba7b810-9dad-41d1-80b4-00c04fd430c8"],
    [CERT.identity_id], TLP_RED_2, [None], None,
]  # fmt: skip
PATTERNS = [
    "[domain-name:value = 'evil.example.com']", "[url:value = 'hxxp://evil[.]com/a']", "[ipv4-addr:value = '10.0.0.300']",
    "[domain-name:value = 'a.com'", "[ipv6-addr:value = '2001:DB8::1']", "[file:hashes.MD5 = 'abc']",
    "[file:size > 10]", "[domain-name:value = 'a.com'] AND [domain-name:value = 'b.com']", "", "not a pattern", 5,
]  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 200)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
)
VALUES_BY_NAME = {
    "id": st.sampled_from(IDS),
    "created": st.sampled_from(TIMESTAMPS),
    "modified": st.sampled_from(TIMESTAMPS),
    "valid_from": st.sampled_from(TIMESTAMPS),
    "valid_until": st.sampled_from(TIMESTAMPS),
    "spec_version": st.sampled_from(["2.1", "2.0", "2.2", 2.1, None]),
    "type": st.sampled_from(["indicator", "malware", "Indicator"]),
    "pattern": st.sampled_from(PATTERNS),
    "pattern_type": st.sampled_from(["stix", "sigma", "STIX", "", None, 1]),
    "pattern_version": st.sampled_from(["2.1", "2.0", "", "3", None, 2.1]),
    "created_by_ref": st.sampled_from(REFS),
    "object_marking_refs": st.sampled_from(MARKINGS),
    "granular_markings": st.just([{"selectors": ["name"], "marking_ref": TLP_RED_2}]),
    "labels": st.sampled_from([["a"], [], ["a", 1], "a", [None]]),
    "indicator_types": st.sampled_from([["malicious-activity"], [], [""], "x"]),
    "confidence": st.sampled_from([0, 100, 101, -1, True, 50.0, "50", None]),
    "revoked": st.sampled_from([True, False, 0, "true", None]),
    "name": SCALARS,
    "description": SCALARS,
    "lang": st.sampled_from(["en", "xx-invalid-"]),
    "external_references": st.just([{"source_name": "x"}]),
    "x_custom": SCALARS | st.just([]) | st.just([1]) | st.just({"a": [1]}),
    "x_Upper": SCALARS,
    "x_thing\n": SCALARS,
    "x_raw_bin": st.just("aGVsbG8="),
    "severity": st.just("high"),
    "custom": st.just("no prefix"),
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(sorted(VALUES_BY_NAME)).flatmap(
            lambda name: st.tuples(st.just(name), VALUES_BY_NAME[name] | st.just(envelope))
        ),
        max_size=3,
    ),
    st.sampled_from([CERT, BANK_A]),
)
def test_fast_path_outcome_equals_full_path(changes, publisher) -> None:
    obj = indicator(name="n", indicator_types=["malicious-activity"])
    for name, value in changes:
        if value is envelope:  # the marker for "remove the property"
            obj.pop(name, None)
        else:
            obj[name] = value
    assert_same_outcome(bundle(obj, indicator()), publisher)


@pytest.mark.parametrize(
    "obj",
    [
        indicator(),
        indicator(valid_until="2024-03-01T10:00:00Z"),  # not after valid_from
        indicator(valid_until="2024-03-01T10:00:00.001Z"),
        indicator(modified="2024-03-01T09:59:59.999Z"),  # before created
        indicator(modified="2024-03-01T10:00:00.0000Z"),  # same instant, other precision
        indicator(created="2024-02-29T10:00:00.000Z", modified="2024-02-29T10:00:00.000Z"),
        indicator(created="2023-02-29T10:00:00.000Z", modified="2023-02-29T10:00:00.000Z"),
        indicator(object_marking_refs=[TLP_RED_2], created_by_ref=CERT.identity_id),
        indicator(created_by_ref=BANK_A.identity_id),  # impersonation
        indicator(created_by_ref="identity--6ba7b810-9dad-41d1-80b4-00c04fd430c8"),  # relay
        indicator(object_marking_refs=["marking-definition--6ba7b810-9dad-41d1-80b4-00c04fd430c8"]),
        indicator(pattern_type="sigma", pattern="title: x"),
        indicator("[domain-name:value = 'xn--80ak6aa92e.com']"),  # homograph warning
        indicator("[url:value = 'hxxps://evil[.]com:443/a/./b/../c']"),
        indicator("[ipv6-addr:value = '::FFFF:1.2.3.4']"),
        indicator(x_custom={"nested": [1, {"a": None}]}, x_other=0),
        indicator(kill_chain_phases=[{"kill_chain_name": "k", "phase_name": "p"}]),
    ],
)
def test_fast_path_examples(obj) -> None:
    assert_same_outcome(bundle(obj))
    assert_same_outcome(orjson.dumps(obj))  # a single object: pointers start at the root


def test_repeated_versions_and_markings_in_one_bundle() -> None:
    first = indicator()
    statement = {
        "type": "marking-definition", "spec_version": "2.1", "id": new_id("marking-definition"),
        "created": TS, "definition_type": "statement", "definition": {"statement": "x"},
    }  # fmt: skip
    objects = [
        first,
        dict(first),
        {**first, "name": "changed"},
        indicator(object_marking_refs=[statement["id"]]),
        statement,
    ]
    assert_same_outcome(bundle(*objects))


def test_plain_indicators_skip_pydantic() -> None:
    """The point of the fast path: the bench's indicators never reach the Indicator model."""
    objects = [
        indicator(f"[ipv4-addr:value = '10.0.0.{i}']", name="n", indicator_types=["x"])
        for i in range(50)
    ]
    with mock.patch.object(checks, "validate_model", side_effect=AssertionError) as validate:
        outcome = run(bundle(*objects))
    assert outcome.receipt.accepted == 50 and validate.call_count == 0


# --- the pieces ---------------------------------------------------------------------------------
def test_plain_timestamp_patterns_imply_the_full_checks() -> None:
    for year, month, day, second, fraction in itertools.product(
        ("0000", "0001", "1900", "2000", "2023", "2024", "9999"),
        range(0, 14), range(0, 33), ("00", "59", "60"), ("", ".5", ".000", ".123456"),
    ):  # fmt: skip
        value = f"{year}-{month:02d}-{day:02d}T12:30:{second}{fraction}Z"
        if PLAIN_TIMESTAMP_RE.fullmatch(value):
            assert check_timestamp(value) == value
        if PLAIN_TIMESTAMP_MILLIS_RE.fullmatch(value):
            assert check_timestamp_millis(value) == value
        if 1 <= day <= 28 and 1 <= month <= 12 and second != "60" and year != "0000":
            assert PLAIN_TIMESTAMP_RE.fullmatch(value)  # the fast path covers ordinary values


def test_lean_normalized_object_equals_the_validated_model() -> None:
    outcome = run(
        bundle(
            indicator(),
            indicator(object_marking_refs=[TLP_RED_2]),
            indicator(pattern_type="yara", pattern="rule x {}"),
        )
    )
    assert len(outcome.accepted) == 3
    for record in outcome.accepted:
        validated = NormalizedObject.model_validate(record.model_dump())
        assert record == validated
        assert record.model_fields_set == validated.model_fields_set
        assert record.model_dump_json() == validated.model_dump_json()
        assert NormalizedObject.model_validate_json(record.model_dump_json()) == record
        assert isinstance(record.received_at, datetime)


def test_garbage_collector_is_left_as_found() -> None:
    assert gc.isenabled()
    run(bundle(indicator()))
    assert gc.isenabled()
    with mock.patch.object(envelope, "_normalise", side_effect=RuntimeError("boom")):
        outcome = run(bundle(indicator()))
    assert outcome.rejections[0].reason == "internal_error" and gc.isenabled()
    gc.disable()
    try:
        run(bundle(indicator()))
        assert not gc.isenabled()
    finally:
        gc.enable()


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(alphabet='ab"\\\x00é\n\U0001f600', max_size=12),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='ab"\\\x00é', max_size=6), children, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(JSON, st.sampled_from([1, 3, 8, 20, 1000]), st.sampled_from([1, 2, 3, 5, 32]))
def test_limits_shortcut_reports_what_the_full_walk_reports(value, max_chars, max_depth) -> None:
    raw = orjson.dumps(value)
    value = orjson.loads(raw)
    limits = Limits(string_chars=max_chars, nesting_depth=max_depth)
    assert _check_shape_quickly(value, raw, limits) == _check_shape_limits(value, limits)


@settings(max_examples=500, deadline=None)
@given(
    st.integers(0, 2**128 - 1),
    st.integers(0, 7),
    st.booleans(),
    st.sampled_from(["", "/128", "/64"]),
)
def test_ipv6_canonical_form_is_ipaddress_s(number, variant, upper, suffix) -> None:
    address = ipaddress.IPv6Address(number)
    text = [str(address), address.exploded, address.compressed.replace("::", ":0:0:", 1)][
        variant % 3
    ]
    text = (text.upper() if upper else text) + suffix
    try:
        expected = (
            str(ipaddress.ip_network(text, strict=True))
            if suffix
            else str(ipaddress.ip_address(text))
        )
    except ValueError:
        with pytest.raises(CanonicalError):
            canonical_ip.__wrapped__(text, 6)
        return
    if suffix == "/128":
        expected = str(address)
    assert canonical_ip.__wrapped__(text, 6).value == expected


@given(st.text(alphabet="hxXH*fpPmeowWdtaA [](){}.:/1éK\u212a\u0130", max_size=12))
def test_defang_hint_equals_the_regex(text) -> None:
    assert _looks_defanged(text) == (_DEFANG_HINT.search(text) is not None)


@given(st.text(max_size=40), st.uuids())
def test_dedup_key_is_uuid5(text, namespace) -> None:
    assert dedup_key(text, namespace) == str(uuid.uuid5(namespace, text))
