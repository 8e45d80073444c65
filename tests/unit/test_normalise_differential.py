# ruff: noqa: E501  (tables of STIX test data read better unwrapped)
"""Differential tests: the fast path against the OASIS tools.

Hard rule: the fast path accepts NOTHING that `stix2validator` (default options) reports an
error on.  Softer: it agrees with `stix2.parse(allow_custom=True)` + `stix2patterns` on
accept/reject, except for the deliberate differences listed in DELIBERATE (docs/normalise.md).
"""

from __future__ import annotations

import copy
import functools
import json
import uuid
from collections import Counter
from typing import Any

import pytest
import stix2
from stix2patterns.validator import validate as validate_pattern
from stix2validator import ValidationOptions, validate_instance

from schemas.envelope import Reason
from tests.helpers.stix_samples import CERT, TLP_GREEN_1, TS, bundle, run

OPTIONS = ValidationOptions(version="2.1")
UUID4 = "6ba7b810-9dad-41d1-80b4-00c04fd430c8"


def _id(object_type: str, n: int) -> str:
    return f"{object_type}--{uuid.UUID(int=n * 7919 + 1, version=4)}"


def base_objects() -> list[dict[str, Any]]:
    """Valid objects of every routed type and a few unrouted ones."""
    common = {"spec_version": "2.1", "created": TS, "modified": TS}
    patterns = [
        "[domain-name:value = 'evil.example.com']",
        "[url:value = 'https://evil.example.com/login.php?x=1']",
        "[ipv4-addr:value = '198.51.100.7']",
        "[ipv4-addr:value = '198.51.100.0/24']",
        "[ipv6-addr:value = '2001:db8::7']",
        "[file:hashes.'SHA-256' = '" + "ab" * 32 + "']",
        "[file:hashes.MD5 = '" + "cd" * 16 + "']",
        "[email-addr:value = 'phish@evil.example.com']",
        "[domain-name:value = 'a.example' OR domain-name:value = 'b.example']",
        "[url:value = 'http://x.example/' AND domain-name:value = 'x.example']",
        "[process:pid = 4]",
        "[ipv4-addr:value = '198.51.100.7'] FOLLOWEDBY [domain-name:value = 'c.example']",
        "[domain-name:value = 'EVIL[.]example']",
        "[url:value = 'hxxp://evil[.]example/a']",
    ]
    objects: list[dict[str, Any]] = []
    for n, pattern in enumerate(patterns):
        objects.append(
            {"type": "indicator", "id": _id("indicator", n), **common, "pattern": pattern,
             "pattern_type": "stix", "valid_from": "2024-03-01T10:00:00Z",
             "valid_until": "2025-03-01T10:00:00Z", "name": "n", "indicator_types": ["malicious-activity"],
             "object_marking_refs": [TLP_GREEN_1], "confidence": 80, "x_cert_score": 5}
        )  # fmt: skip
    objects += [
        {"type": "indicator", "id": _id("indicator", 99), **common, "pattern": "rule x {}",
         "pattern_type": "yara", "valid_from": "2024-03-01T10:00:00Z"},
        {"type": "identity", "id": _id("identity", 1), **common, "name": "ACME",
         "identity_class": "organization", "sectors": ["financial-services"]},
        {"type": "relationship", "id": _id("relationship", 1), **common, "relationship_type": "indicates",
         "source_ref": _id("indicator", 0), "target_ref": _id("malware", 1),
         "start_time": "2024-01-01T00:00:00Z", "stop_time": "2024-02-01T00:00:00Z"},
        {"type": "sighting", "id": _id("sighting", 1), **common, "sighting_of_ref": _id("indicator", 0),
         "count": 3, "first_seen": "2024-01-01T00:00:00Z", "last_seen": "2024-01-02T00:00:00Z",
         "where_sighted_refs": [_id("identity", 1)]},
        {"type": "observed-data", "id": _id("observed-data", 1), **common,
         "first_observed": "2024-01-01T00:00:00Z", "last_observed": "2024-01-01T00:00:00Z",
         "number_observed": 1, "object_refs": [_id("ipv4-addr", 1)]},
        {"type": "malware", "id": _id("malware", 1), **common, "name": "Emotet", "is_family": True},
        {"type": "ipv4-addr", "id": _id("ipv4-addr", 1), "spec_version": "2.1", "value": "198.51.100.3"},
        {"type": "domain-name", "id": _id("domain-name", 1), "spec_version": "2.1", "value": "evil.example"},
        {"type": "url", "id": _id("url", 1), "spec_version": "2.1", "value": "https://evil.example/"},
        {"type": "email-addr", "id": _id("email-addr", 1), "spec_version": "2.1", "value": "a@evil.example"},
        {"type": "file", "id": _id("file", 1), "spec_version": "2.1", "hashes": {"MD5": "cd" * 16}},
        {"type": "marking-definition", "id": _id("marking-definition", 1), "spec_version": "2.1",
         "created": TS, "definition_type": "statement", "definition": {"statement": "(c) CERT"}},
    ]  # fmt: skip
    return objects


BAD_VALUES: list[Any] = [None, -1, 1.5, "", "x", [], {"a": 1}]
BAD_IDS = ["indicator--123", "indicator--" + UUID4.upper(), "Indicator--" + UUID4,
           "indicator-" + UUID4, "indicator--6ba7b810-9dad-61d1-80b4-00c04fd430c8",
           "indicator--6ba7b810-9dad-41d1-c0b4-00c04fd430c8", "identity--" + UUID4]  # fmt: skip
BAD_TIMESTAMPS = ["2024-03-01", "2024-03-01T10:00:00", "2024-03-01T10:00:00+00:00",
                  "2024-13-01T10:00:00.000Z", "2024-02-30T10:00:00.000Z", "2023-02-29T00:00:00.000Z",
                  "2024-03-01T24:00:00.000Z", "2024-03-01T10:00:60.000Z", "2024-03-01T10:00:00.000z",
                  "2024-03-01 10:00:00.000Z", " 2024-03-01T10:00:00.000Z", "2024-03-01T10:00:00.0Z"]  # fmt: skip
BAD_PATTERNS = ["", "[", "[domain-name:value = 'x.com'", "domain-name:value = 'x.com'",
                "[domain-name:value = x.com]", "[domain-name:value = 'x.com' AND]", "[x:y = 'z']",
                "[domain-name:value = 'x.com'] WITHIN -1 SECONDS", "[file:hashes.MD5 = 'zz']",
                "[file:hashes.'SHA-256' = 'ab']", "[domain-name:value = 'a' OR]", "[Domain-Name:value = 'x']",
                "[domain-name:Value = 'x']", "[domain-name:value = 'x.com']]", "[[domain-name:value = 'x.com']]"]  # fmt: skip


def corpus() -> list[tuple[str, dict[str, Any]]]:
    """(label, object) pairs: the valid bases and systematic mutations of them."""
    cases: list[tuple[str, dict[str, Any]]] = []
    for number, base in enumerate(base_objects()):
        label = f"{base['type']}"
        cases.append((f"{label} valid" if number else "indicator valid", base))
        if base["type"] == "indicator" and number:
            cases.append((f"indicator pattern {base['pattern']}", base))
            continue  # mutate one indicator: the others only vary the pattern
        for name in list(base):
            dropped = {k: v for k, v in base.items() if k != name}
            cases.append((f"{label} without {name}", dropped))
            for value in BAD_VALUES:
                cases.append((f"{label} {name}={value!r}", {**base, name: value}))
        if "created" in base:
            for stamp in BAD_TIMESTAMPS:
                cases.append(
                    (f"{label} created={stamp}", {**base, "created": stamp, "modified": stamp})
                )
            cases.append(
                (f"{label} modified<created", {**base, "modified": "2024-02-01T10:00:00.000Z"})
            )
            cases.append((f"{label} spec 2.0", {**base, "spec_version": "2.0"}))
            cases.append((f"{label} spec 2.2", {**base, "spec_version": "2.2"}))
        cases.append((f"{label} severity", {**base, "severity": "high"}))
        cases.append((f"{label} custom no x_", {**base, "my_prop": "v"}))
        cases.append(
            (
                f"{label} unknown marking",
                {**base, "object_marking_refs": [_id("marking-definition", 5)]},
            )
        )
    indicator = base_objects()[0]
    for bad_id in BAD_IDS:
        cases.append((f"indicator id {bad_id}", {**indicator, "id": bad_id}))
    for stamp in BAD_TIMESTAMPS:
        cases.append((f"indicator valid_from={stamp}", {**indicator, "valid_from": stamp}))
    for pattern in BAD_PATTERNS:
        cases.append((f"indicator pattern {pattern!r}", {**indicator, "pattern": pattern}))
    cases.append(
        ("valid_until == valid_from", {**indicator, "valid_until": indicator["valid_from"]})
    )
    cases.append(("valid_until < valid_from", {**indicator, "valid_until": "2020-01-01T00:00:00Z"}))
    cases.append(
        ("valid_until with fraction", {**indicator, "valid_until": "2024-03-01T10:00:00.001Z"})
    )
    cases.append(("external ref", {**indicator, "external_references": [{"source_name": "cve"}]}))
    cases.append(
        (
            "kill chain",
            {**indicator, "kill_chain_phases": [{"kill_chain_name": "x", "phase_name": "y"}]},
        )
    )
    cases.append(
        (
            "granular bad selector",
            {
                **indicator,
                "granular_markings": [{"selectors": ["nope"], "marking_ref": TLP_GREEN_1}],
            },
        )
    )
    cases.append(("lang", {**indicator, "lang": "not a language!"}))
    return cases


CORPUS = corpus()


def oasis_accepts(obj: dict[str, Any]) -> bool:
    try:
        return bool(validate_instance(copy.deepcopy(obj), OPTIONS).is_valid)
    except Exception:
        return False


def naive_accepts(obj: dict[str, Any]) -> bool:
    try:
        parsed = stix2.parse(json.dumps(obj), allow_custom=True, version="2.1")
    except Exception:
        return False
    if parsed.get("pattern_type") == "stix":
        return bool(validate_pattern(parsed["pattern"], stix_version="2.1"))
    return True


def fast_outcome(obj: dict[str, Any]) -> tuple[bool, list[Reason], dict[str, Any] | None]:
    outcome = run(bundle(obj), CERT)
    accepted = outcome.accepted[0].object if outcome.accepted else None
    return accepted is not None, [r.reason for r in outcome.rejections], accepted


@functools.cache
def decisions(index: int) -> tuple[bool, tuple[Reason, ...], bool, bool, bool]:
    """(fast accepts, fast reasons, OASIS accepts the input, OASIS accepts what the bus would
    deliver, naive accepts) for CORPUS[index]; cached because the OASIS tools are slow."""
    _, obj = CORPUS[index]
    accepted, reasons, delivered = fast_outcome(obj)
    oasis_input = oasis_accepts(obj)
    oasis_delivered = oasis_accepts(delivered) if delivered is not None else False
    return accepted, tuple(reasons), oasis_input, oasis_delivered, naive_accepts(obj)


# Where the bus differs from stix2.parse + stix2patterns on purpose (see docs/normalise.md).
def deliberate_difference(
    label: str, decision: tuple[bool, tuple[Reason, ...], bool, bool, bool]
) -> str | None:
    accepted, reasons, oasis_input, _, _ = decision
    if accepted == oasis_input:
        # stix2.parse(allow_custom=True) lets through what the OASIS validator rejects (null
        # or ill-typed properties, modified < created, reserved names...) or rejects what it
        # accepts (unknown marking definition types): the bus sides with the validator.
        return "follows the OASIS validator"
    if Reason.INVALID_PATTERN in reasons:
        return "observable values are checked, not just pattern syntax"
    if Reason.UNKNOWN_MARKING in reasons:
        return "unknown markings fail closed"
    if (accepted and "spec 2.0" in label) or "without spec_version" in label:
        return "STIX 2.0 objects are upgraded"
    if Reason.UPGRADE_NOT_LOSSLESS in reasons:
        return "STIX 2.0 objects that cannot be upgraded losslessly"
    if Reason.INVALID_ID in reasons and any(c.isupper() for c in label.partition("--")[2]):
        return "identifiers must be lower case (one object, one id)"
    return None


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 300
    assert sum(decisions(i)[2] for i in range(len(CORPUS))) > 30, "enough valid objects"
    assert sum(not decisions(i)[2] for i in range(len(CORPUS))) > 200, "enough invalid objects"


def test_fast_path_accepts_nothing_the_oasis_validator_rejects() -> None:
    wrongly_accepted = []
    for index, (label, obj) in enumerate(CORPUS):
        accepted, _, oasis_input, oasis_delivered, _ = decisions(index)
        is_21 = obj.get("spec_version") == "2.1"
        if accepted and not (oasis_delivered and (oasis_input or not is_21)):
            wrongly_accepted.append(label)
    assert wrongly_accepted == []


def test_agreement_with_stix2_parse_and_stix2patterns() -> None:
    unexplained: list[str] = []
    explained: Counter[str] = Counter()
    for index, (label, _) in enumerate(CORPUS):
        decision = decisions(index)
        if decision[0] == decision[4]:
            continue
        category = deliberate_difference(label, decision)
        if category is None:
            unexplained.append(f"{label}: fast={decision[0]} naive={decision[4]} {decision[1]}")
        else:
            explained[category] += 1
    assert unexplained == []
    print(dict(explained))


@pytest.mark.parametrize(
    "label", ["indicator valid", "identity valid", "sighting valid", "relationship valid"]
)
def test_valid_bases_are_accepted_by_all(label: str) -> None:
    index = [case for case, _ in CORPUS].index(label)
    accepted, _, oasis_input, oasis_delivered, naive = decisions(index)
    assert accepted and oasis_input and oasis_delivered and naive
