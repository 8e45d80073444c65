# ruff: noqa: E501  (tables of STIX test data read better unwrapped)
"""Fuzzing normalise_submission: it never raises and always accounts for what it was given."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.envelope import Reason
from stixbus.settings import Limits
from tests.helpers.stix_samples import TS, bundle, indicator, new_id, run

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
PROPERTY_NAMES = st.sampled_from(
    ["type", "id", "spec_version", "created", "modified", "pattern", "pattern_type", "valid_from",
     "valid_until", "created_by_ref", "object_marking_refs", "granular_markings", "labels",
     "confidence", "name", "x_custom", "value", "hashes", "revoked"]
)  # fmt: skip


WHOLE_SUBMISSION = {Reason.TOO_LARGE, Reason.TOO_MANY_OBJECTS, Reason.STRING_TOO_LONG, Reason.TOO_DEEP,
                    Reason.NUL_CHARACTER, Reason.INVALID_JSON, Reason.INVALID_UTF8,
                    Reason.NOT_A_PUBLISHER, Reason.INTERNAL_ERROR, Reason.DUPLICATE_KEY}  # fmt: skip


def is_whole_submission_rejection(outcome) -> bool:
    """Refused whole: counted as one rejection, with nothing accepted."""
    rejections = outcome.rejections
    return (
        len(rejections) == 1
        and outcome.receipt.accepted == 0
        and outcome.receipt.rejected == 1
        and (
            rejections[0].reason in WHOLE_SUBMISSION
            or rejections[0].pointer in ("", "/id", "/objects")
        )
    )


def assert_accounted(outcome, object_count: int | None) -> None:
    receipt = outcome.receipt
    assert receipt.accepted == len(outcome.accepted) == len(receipt.accepted_ids)
    assert receipt.rejections == outcome.rejections
    if object_count is not None and not is_whole_submission_rejection(outcome):
        assert receipt.accepted + receipt.rejected == object_count
    if outcome.rejections:
        assert outcome.dead_letter is not None and receipt.rejected >= 1
    else:
        assert outcome.dead_letter is None
    for rejection in outcome.rejections:
        assert rejection.message and isinstance(rejection.reason, Reason)
        assert rejection.pointer == "" or rejection.pointer.startswith("/")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw: bytes) -> None:
    assert_accounted(run(raw), None)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_arbitrary_json(value: object) -> None:
    assert_accounted(run(orjson.dumps(value)), None)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(PROPERTY_NAMES, JSON_VALUES, max_size=6), max_size=5))
def test_objects_with_wrong_types_everywhere(objects: list[dict[str, object]]) -> None:
    outcome = run(bundle(*objects))
    assert_accounted(outcome, len(objects))


@settings(max_examples=200, deadline=None)
@given(PROPERTY_NAMES, JSON_VALUES)
def test_one_property_of_a_valid_indicator_replaced(name: str, value: object) -> None:
    obj = indicator(x_other=1)
    obj[name] = value
    outcome = run(bundle(obj, indicator()))
    assert_accounted(outcome, 2)
    assert outcome.receipt.accepted >= 1 or is_whole_submission_rejection(outcome)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_pattern_injection(text: str) -> None:
    for pattern in (text, f"[domain-name:value = '{text}']", f"[url:value = '{text}'] OR 1=1"):
        assert_accounted(run(bundle(indicator(pattern))), 1)


def test_malformed_corpus() -> None:
    big_string = "a" * (10 * 1024 * 1024)
    cases = [
        (b"", Reason.INVALID_JSON),
        (b"\x00", Reason.INVALID_JSON),
        (b'{"type": "bundle\x00"}', Reason.INVALID_JSON),
        ('{"type": "indicator", "name": "caf\u00e9"}'.encode("latin-1"), Reason.INVALID_UTF8),
        (b'{"a": "\\ud800"}', Reason.INVALID_JSON),
        (orjson.dumps({"type": "indicator", "name": big_string}), Reason.TOO_LARGE),
        (b"[" * 10_000 + b"]" * 10_000, Reason.TOO_DEEP),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, Reason.TOO_DEEP),
        (b"NaN", Reason.INVALID_JSON),
        (
            b'{"type": "bundle", "id": "bundle--6ba7b810-9dad-41d1-80b4-00c04fd430c8", "objects": 5}',
            Reason.NOT_STIX,
        ),
    ]
    for raw, reason in cases:
        outcome = run(raw)
        assert [r.reason for r in outcome.rejections] == [reason], raw[:60]
        assert_accounted(outcome, None)


def test_ten_megabyte_string_over_a_raised_byte_limit() -> None:
    raw = bundle(indicator(name="a" * (10 * 1024 * 1024)))
    outcome = run(raw, limits=Limits(message_bytes=20 * 1024 * 1024))
    assert [r.reason for r in outcome.rejections] == [Reason.STRING_TOO_LONG]


def test_hundred_thousand_object_bundle_is_refused_whole() -> None:
    tiny = {"type": "x-t", "id": "x-t--6ba7b810-9dad-41d1-80b4-00c04fd430c8"}
    raw = bundle(*([tiny] * 100_000))
    outcome = run(raw, limits=Limits(message_bytes=len(raw)))
    assert [r.reason for r in outcome.rejections] == [Reason.TOO_MANY_OBJECTS]
    assert outcome.accepted == []


def test_many_objects_within_limits_are_each_accounted() -> None:
    objects = [indicator(f"[ipv4-addr:value = '10.0.{i // 256}.{i % 256}']") for i in range(2000)]
    objects[7]["valid_from"] = "never"
    outcome = run(bundle(*objects))
    assert outcome.receipt.accepted == 1999 and outcome.receipt.rejected == 1
    assert outcome.rejections[0].pointer == "/objects/7/valid_from"


def test_unknown_type_without_created_is_treated_as_custom_sco() -> None:
    obj = {"type": "x-thing", "id": new_id("x-thing"), "spec_version": "2.1", "created": TS}
    assert_accounted(run(bundle(obj)), 1)
