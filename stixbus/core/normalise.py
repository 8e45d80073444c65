"""Normalise one ingest submission (pure): parse, validate, upgrade, bind identity, canonicalise.

`normalise_submission` is the only entry point; the Faust agent calls it once per ingest record
and publishes what it returns.  It never raises: anything unexpected becomes an
`internal_error` rejection, so a record is never lost between ingest and the receipt.

Validation is a fast path that is at least as strict as the OASIS `stix2-validator`: pydantic
models and a pattern fast parser for what indicators normally look like, and the OASIS validator
itself for everything the fast path does not model completely (other object types, extensions,
external references, unusual custom properties...).  See docs/normalise.md.
"""

from __future__ import annotations

import base64
import gc
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.envelope import DeadLetter, NormalizedObject, Reason, Receipt, Rejection
from schemas.org import Org, Registry
from schemas.stix import (
    IDENTIFIER_PATTERN,
    IDENTIFIER_RE,
    MODEL_BY_TYPE,
    PLAIN_TIMESTAMP_MILLIS_RE,
    PLAIN_TIMESTAMP_RE,
    SCO_TYPES,
    TIMESTAMP_ORDER_RULES,
    TIMESTAMP_RE,
    TYPE_NAME_RE,
    Indicator,
    StixObject,
    check_timestamp,
    check_timestamp_millis,
    timestamp_order_key,
)
from schemas.tlp import MARKING_TLP, TLP
from stixbus.core.canonical import (
    CanonicalError,
    canonical_hash,
    canonical_observable,
    dedup_key,
    deterministic_sco_id,
)
from stixbus.core.pattern import PatternError, parse_pattern
from stixbus.core.payload import InputLimits, PayloadProblem, decode_payload, json_pointer
from stixbus.core.upgrade import NotLossless, is_stix20_object, upgrade_object


@dataclass(frozen=True)
class NormaliseOutcome:
    accepted: list[NormalizedObject]
    receipt: Receipt
    dead_letter: DeadLetter | None = None
    rejections: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Submission:
    """Who sent what, when: the facts every output record repeats."""

    publisher: Org
    registry: Registry
    submission_id: str
    received_at: datetime
    published_at: datetime
    collector_paused: bool = False  # normalise_submission paused the cyclic GC for the call
    plain_types: bool = False  # str id, datetime times: the lean NormalizedObject may be used


# Types the fast path validates completely (given only the properties its models know and `x_`
# custom properties).  Everything else is also checked by the OASIS validator.
FAST_PATH_TYPES = frozenset({"indicator", "identity", "relationship", "sighting"})
# Properties whose rules the models do not reproduce (language tags, extension definitions,
# external-reference oneOf, selector resolution...): their presence sends an object to the
# OASIS validator as well.
OFFICIALLY_CHECKED_PROPERTIES = frozenset(
    {"external_references", "kill_chain_phases", "extensions", "granular_markings", "lang"}
)
FAST_CUSTOM_PROPERTY = re.compile(r"^x_[a-z0-9_]{1,247}$")
# The STIX 2.1 SCO types: they may omit spec_version and have no created/modified.
STIX_SCO_TYPES = frozenset(
    {
        "artifact", "autonomous-system", "directory", "domain-name", "email-addr",
        "email-message", "file", "ipv4-addr", "ipv6-addr", "mac-addr", "mutex",
        "network-traffic", "process", "software", "url", "user-account",
        "windows-registry-key", "x509-certificate",
    }
)  # fmt: skip
_ORDER_REASON = {
    "indicator": Reason.VALID_UNTIL_NOT_AFTER_VALID_FROM,
}


def normalise_submission(
    raw: bytes,
    publisher: Org,
    registry: Registry,
    limits: InputLimits,
    *,
    submission_id: str,
    received_at: datetime,
    published_at: datetime,
) -> NormaliseOutcome:
    """Validate and normalise one ingest record from `publisher`; never raises."""
    collecting = gc.isenabled()
    submission = Submission(
        publisher,
        registry,
        submission_id,
        received_at,
        published_at,
        collector_paused=collecting,
        plain_types=(
            type(submission_id) is str
            and type(received_at) is datetime
            and type(published_at) is datetime
            and type(publisher.id) is str
        ),
    )
    # The cyclic garbage collector is paused for the call (it is CPU-bound, synchronous and
    # bounded by the input limits): its generation-0/1/2 passes over the thousands of young
    # objects a bundle makes cost about a fifth of the time, while everything the call creates
    # is freed by reference counting anyway.  Left as it was found (a caller may have disabled it).
    if collecting:
        gc.disable()
    try:
        return _normalise(raw, submission, limits)
    except Exception as exc:  # the promise is a receipt for every record, bugs included
        rejection = Rejection(
            reason=Reason.INTERNAL_ERROR,
            message=(
                f"the bus failed while normalising this submission ({type(exc).__name__}: "
                f"{str(exc)[:300]}); nothing was accepted. Resend it later or contact the "
                "bus operator with the submission id"
            ),
        )
        try:
            return _outcome(raw, submission, [], [rejection], rejected_count=1, warnings=[])
        except Exception:  # e.g. raw was not bytes: still hand back a receipt
            return _outcome(b"", submission, [], [rejection], rejected_count=1, warnings=[])
    finally:
        if collecting:
            gc.enable()


# --- whole submission --------------------------------------------------------------------------
def _normalise(raw: bytes, submission: Submission, limits: InputLimits) -> NormaliseOutcome:
    if not submission.publisher.publishes:
        return _reject_whole(
            raw,
            submission,
            Reason.NOT_A_PUBLISHER,
            "",
            f"org {submission.publisher.id!r} has no publisher role in the registry: ask the bus "
            "operator to grant it before publishing",
        )
    document = decode_payload(raw, limits)
    if isinstance(document, PayloadProblem):
        return _reject_whole(raw, submission, document.reason, document.pointer, document.message)
    located = _locate_objects(document, limits)
    if isinstance(located, PayloadProblem):
        return _reject_whole(raw, submission, located.reason, located.pointer, located.message)
    objects, pointer_prefix, bundle_is_20 = located

    warnings: list[str] = []
    results: list[_Accepted | list[Rejection] | None] = [None] * len(objects)
    known_markings: set[str] = set()
    # Marking definitions first: the other objects may reference them (a stable partition).
    markings = [i for i, obj in enumerate(objects) if _is_marking_definition(obj)]
    order: Iterable[int] = range(len(objects))
    if markings:
        marking_set = set(markings)
        order = markings + [i for i in order if i not in marking_set]
    for index in order:
        pointer = f"{pointer_prefix}/{index}" if pointer_prefix else ""
        obj = objects[index]
        result: _Accepted | list[Rejection] | None = None
        if type(obj) is dict and obj.get("type") == "indicator":  # the plain-indicator fast path
            try:
                result = _accept_plain_indicator(obj, pointer, submission, known_markings)
            except _Rejected as rejected:
                result = rejected.rejections
        if result is None:  # not a plain indicator: the full checks decide
            result = _check_object(obj, pointer, bundle_is_20, submission, known_markings)
        if type(result) is _Accepted:
            if result.warnings:
                warnings.extend(result.warnings)
            if result.object["type"] == "marking-definition":
                known_markings.add(result.object["id"])
        results[index] = result
    _reject_repeated_versions(objects, results, pointer_prefix)

    accepted: list[NormalizedObject] = []
    rejections: list[Rejection] = []
    rejected_count = 0
    for checked in results:
        if isinstance(checked, _Accepted):
            accepted.append(_normalized_object(checked, submission))
        elif checked:
            rejected_count += 1
            rejections.extend(checked)
    if not objects:
        warnings.append("the bundle has no objects: nothing to publish")
    return _outcome(raw, submission, accepted, rejections, rejected_count, warnings)


def _is_marking_definition(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("type") == "marking-definition"


def _locate_objects(
    document: Any, limits: InputLimits
) -> tuple[list[Any], str, bool] | PayloadProblem:
    """(objects, pointer prefix, is a STIX 2.0 bundle) for a bundle or a single object."""
    if not isinstance(document, dict) or not isinstance(document.get("type"), str):
        return PayloadProblem(
            Reason.NOT_STIX,
            "",
            "the submission is not a STIX object or bundle: send a JSON object with a 'type' "
            "property (a bundle, or one STIX object)",
        )
    if document["type"] != "bundle":
        return [document], "", False
    objects = document.get("objects", [])
    if not isinstance(objects, list):
        return PayloadProblem(
            Reason.NOT_STIX,
            "/objects",
            "the bundle's 'objects' must be a JSON array of STIX objects",
        )
    if len(objects) > limits.objects_per_bundle:
        return PayloadProblem(
            Reason.TOO_MANY_OBJECTS,
            "/objects",
            f"the bundle has {len(objects)} objects, over the {limits.objects_per_bundle}-object "
            "limit: split it into several bundles",
        )
    bundle_id = document.get("id")
    if (
        not isinstance(bundle_id, str)
        or not IDENTIFIER_RE.match(bundle_id)
        or not bundle_id.startswith("bundle--")
    ):
        return PayloadProblem(
            Reason.INVALID_ID,
            "/id",
            f"the bundle id {bundle_id!r} is not of the form bundle--<uuid>: give the bundle a "
            "valid id",
        )
    spec_version = document.get("spec_version")
    if spec_version not in (None, "2.0", "2.1"):
        return PayloadProblem(
            Reason.UNSUPPORTED_SPEC_VERSION,
            "/spec_version",
            f"bundle spec_version {spec_version!r} is not supported: send STIX 2.1 (or 2.0)",
        )
    return objects, "/objects", spec_version == "2.0"


# --- one object --------------------------------------------------------------------------------
@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is measurably slower
class _Accepted:
    object: dict[str, Any]
    tlp: TLP
    tlp_inherited: bool
    canonical_pattern: str | None = None
    dedup_key: str | None = None
    observable_types: tuple[str, ...] = ()
    canonical_sco_id: str | None = None
    warnings: tuple[str, ...] = ()


class _Rejected(Exception):
    """Internal control flow: the object broke a rule; carries the rejections to report."""

    def __init__(self, rejections: list[Rejection]) -> None:
        super().__init__(rejections[0].message)
        self.rejections = rejections


def _reject(obj_id: Any, reason: Reason, pointer: str, message: str) -> _Rejected:
    object_id = obj_id if isinstance(obj_id, str) else None
    return _Rejected(
        [Rejection(object_id=object_id, reason=reason, pointer=pointer, message=message)]
    )


def _check_object(
    obj: Any,
    pointer: str,
    bundle_is_20: bool,
    submission: Submission,
    known_markings: set[str],
) -> _Accepted | list[Rejection]:
    try:
        return _accept_object(obj, pointer, bundle_is_20, submission, known_markings)
    except _Rejected as rejected:
        return rejected.rejections


# --- the plain indicator: one pass, no pydantic --------------------------------------------------
# The commonest object by far.  `_accept_plain_indicator` checks, with cheap sufficient
# conditions, everything `_accept_object` checks up to the pattern (identity, spec_version, the
# Indicator model, null/empty values, timestamps and their order, no property that needs the
# OASIS validator); on the first doubt it returns None and `_accept_object` decides, and reports
# the problem, as before.  From the pattern on it runs the same code as `_accept_object`.
# Each kind below implies that the `Indicator` model (strict pydantic) accepts the value.
_STR, _STRINGS, _TIMESTAMP, _ID, _MARKING_REFS, _BOOL, _CONFIDENCE = range(7)
# The required properties (checked first, one by one) and the optional ones by kind.
_PLAIN_INDICATOR_REQUIRED = frozenset(
    {"type", "spec_version", "id", "created", "modified", "pattern", "pattern_type", "valid_from"}
)
_PLAIN_INDICATOR_REQUIRED_COUNT = len(_PLAIN_INDICATOR_REQUIRED)
_PLAIN_INDICATOR_OPTIONAL: dict[str, int] = {
    "created_by_ref": _ID,
    "revoked": _BOOL,
    "labels": _STRINGS,
    "confidence": _CONFIDENCE,
    "object_marking_refs": _MARKING_REFS,
    "name": _STR,
    "description": _STR,
    "indicator_types": _STRINGS,
    "pattern_version": _STR,
    "valid_until": _TIMESTAMP,
}
# The two halves of IDENTIFIER_PATTERN, for `fullmatch` on a slice (`$` would allow a trailing
# newline, which pydantic's pattern check does not).  Matching the whole pattern costs more: its
# `[a-z0-9-]+` first swallows the UUID and then backtracks.
_ID_TYPE_RE = re.compile(r"[a-z][a-z0-9-]+[a-z0-9]")
_ID_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-5][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
)
assert f"^{_ID_TYPE_RE.pattern}--{_ID_UUID_RE.pattern}$" == IDENTIFIER_PATTERN
_INDICATOR_PREFIX_LENGTH = len("indicator--")
_MARKING_PREFIX_LENGTH = len("marking-definition--")


def _plain_identifier(value: str) -> bool:
    """A sufficient condition for IDENTIFIER_PATTERN: split at the first '--'."""
    split = value.find("--")
    return (
        split >= 3
        and _ID_TYPE_RE.fullmatch(value, 0, split) is not None
        and _ID_UUID_RE.fullmatch(value, split + 2) is not None
    )


_CUSTOM_PROPERTY_FULL_RE = re.compile(r"x_[a-z0-9_]{1,247}")


def _accept_plain_indicator(
    obj: dict[str, Any], pointer: str, submission: Submission, known_markings: set[str]
) -> _Accepted | None:
    """Accept a plain STIX 2.1 indicator, or None when `_accept_object` must decide."""
    get = obj.get
    object_id, created, modified = get("id"), get("created"), get("modified")
    pattern, pattern_type, valid_from = get("pattern"), get("pattern_type"), get("valid_from")
    # The required properties (type is "indicator": the caller checked).
    if not (
        get("spec_version") == "2.1"  # not missing, not 2.0 (upgrade rules)
        and type(object_id) is str
        and type(created) is str
        and type(modified) is str
        and type(pattern) is str
        and type(pattern_type) is str
        and type(valid_from) is str
        and object_id.startswith("indicator--")
        and _ID_UUID_RE.fullmatch(object_id, _INDICATOR_PREFIX_LENGTH) is not None
        and PLAIN_TIMESTAMP_MILLIS_RE.fullmatch(created) is not None
        and (modified == created or PLAIN_TIMESTAMP_MILLIS_RE.fullmatch(modified) is not None)
        and PLAIN_TIMESTAMP_RE.fullmatch(valid_from) is not None
    ):
        return None
    # The others, one branch per kind, inline: this runs for every indicator.
    if len(obj) > _PLAIN_INDICATOR_REQUIRED_COUNT:
        kinds = _PLAIN_INDICATOR_OPTIONAL
        for name in obj.keys() - _PLAIN_INDICATOR_REQUIRED:
            value = obj[name]
            kind = kinds.get(name)
            value_type = type(value)
            if kind == _STR:
                if value_type is not str:
                    return None
            elif kind == _STRINGS:
                if value_type is not list or not value:
                    return None
                for item in value:
                    if type(item) is not str:
                        return None
            elif kind == _TIMESTAMP:
                if value_type is not str or PLAIN_TIMESTAMP_RE.fullmatch(value) is None:
                    return None
            elif kind == _ID:
                if value_type is not str or not _plain_identifier(value):
                    return None
            elif kind == _MARKING_REFS:
                if value_type is not list or not value:
                    return None
                for item in value:
                    if (
                        type(item) is not str
                        or not item.startswith("marking-definition--")
                        or _ID_UUID_RE.fullmatch(item, _MARKING_PREFIX_LENGTH) is None
                    ):
                        return None
            elif kind == _BOOL:
                if value_type is not bool:
                    return None
            elif kind == _CONFIDENCE:
                if value_type is not int or not 0 <= value <= 100:
                    return None
            elif (  # a custom property: the fast path vouches for x_ names (not *_bin/*_hex) alone
                value is None
                or value == []
                or _CUSTOM_PROPERTY_FULL_RE.fullmatch(name) is None
                or name.endswith(("_bin", "_hex"))
            ):
                return None
    if modified != created and timestamp_order_key(modified) < timestamp_order_key(created):
        return None
    valid_until = get("valid_until")
    if valid_until is not None and not (
        timestamp_order_key(valid_until) > timestamp_order_key(valid_from)
    ):
        return None

    # From here on: what `_accept_object` does for an indicator that got this far.
    parsed_pattern = None
    warnings: tuple[str, ...] = ()
    if pattern_type == "stix":
        try:
            parsed_pattern = parse_pattern(pattern, get("pattern_version") or "2.1")
        except PatternError:
            return None  # `_accept_object` reports it
        if parsed_pattern.warnings:
            warnings = tuple(f"{pointer or '/'}/pattern: {w}" for w in parsed_pattern.warnings)
    publisher = submission.publisher
    if "object_marking_refs" in obj:  # (no granular_markings here)
        tlp, tlp_inherited = _object_tlp(
            obj, f"indicator {object_id}", pointer, publisher, known_markings
        )
    else:
        tlp, tlp_inherited = publisher.default_tlp, True
    if "created_by_ref" in obj:
        obj = _bind_creator(obj, f"indicator {object_id}", pointer, submission)
    else:
        obj = {**obj, "created_by_ref": publisher.identity_id}
    if parsed_pattern is None:
        return _Accepted(obj, tlp, tlp_inherited, warnings=warnings)
    canonical = parsed_pattern.canonical
    return _Accepted(
        obj,
        tlp,
        tlp_inherited,
        canonical,
        dedup_key(canonical, submission.registry.bus.namespace),
        parsed_pattern.observable_types,
        None,
        warnings,
    )


def _accept_object(
    obj: Any,
    pointer: str,
    bundle_is_20: bool,
    submission: Submission,
    known_markings: set[str],
) -> _Accepted:
    obj = _check_identity_of_object(obj, pointer)
    object_id, object_type = obj["id"], obj["type"]
    label = f"{object_type} {object_id}"
    warnings: list[str] = []
    if is_stix20_object(obj, bundle_is_20):
        try:
            upgraded = upgrade_object(obj)
        except NotLossless as exc:
            raise _reject(
                object_id,
                Reason.UPGRADE_NOT_LOSSLESS,
                pointer,
                f"{label} is STIX 2.0 and cannot be upgraded to 2.1 without loss: {exc}. "
                "Send it as STIX 2.1",
            ) from None
        obj = upgraded.object
        warnings.append(
            f"{pointer or '/'}: {label} upgraded from STIX 2.0 ({', '.join(upgraded.changes)})"
        )
    is_sco = object_type in STIX_SCO_TYPES or (
        "created" not in obj and object_type not in MODEL_BY_TYPE
    )
    _check_spec_version(obj, label, pointer, is_sco)
    _check_top_level_values(obj, label, pointer)
    if not is_sco and object_type not in MODEL_BY_TYPE:
        _check_created_modified(obj, label, pointer)  # the models check these themselves
    model = _validate_model(obj, label, pointer)
    if model is not None and "modified" in obj and "created" in obj:
        _check_modified_not_before_created(obj, label, pointer)
    _check_timestamp_order(obj, label, pointer)

    parsed_pattern = None
    if isinstance(model, Indicator) and model.pattern_type == "stix":
        try:
            parsed_pattern = parse_pattern(model.pattern, model.pattern_version or "2.1")
        except PatternError as exc:
            raise _reject(
                object_id, Reason.INVALID_PATTERN, f"{pointer}/pattern", f"{label}: {exc}"
            ) from None
        warnings.extend(f"{pointer or '/'}/pattern: {w}" for w in parsed_pattern.warnings)

    tlp, tlp_inherited = _object_tlp(obj, label, pointer, submission.publisher, known_markings)
    is_standard_tlp_definition = object_id in MARKING_TLP
    if not is_sco and not is_standard_tlp_definition:
        obj = _bind_creator(obj, label, pointer, submission)

    canonical_sco_id: str | None = None
    sco_types: tuple[str, ...] = ()
    if object_type in SCO_TYPES:
        canonical_sco_id, sco_warnings = _canonical_sco(obj, label, pointer)
        warnings.extend(sco_warnings)
        sco_types = (object_type,)

    if _needs_official_validation(obj, object_type) and not is_standard_tlp_definition:
        # Milliseconds of allocation-heavy work: let the collector run (see normalise_submission).
        if submission.collector_paused:
            gc.enable()
        try:
            _check_with_oasis_validator(obj, label, pointer)
        finally:
            if submission.collector_paused:
                gc.disable()

    return _Accepted(
        object=obj,
        tlp=tlp,
        tlp_inherited=tlp_inherited,
        canonical_pattern=parsed_pattern.canonical if parsed_pattern else None,
        dedup_key=(
            dedup_key(parsed_pattern.canonical, submission.registry.bus.namespace)
            if parsed_pattern
            else None
        ),
        observable_types=parsed_pattern.observable_types if parsed_pattern else sco_types,
        canonical_sco_id=canonical_sco_id,
        warnings=tuple(warnings),
    )


def _check_identity_of_object(obj: Any, pointer: str) -> dict[str, Any]:
    """A JSON object with a well-formed STIX type and an id of that type."""
    if not isinstance(obj, dict):
        raise _reject(
            None,
            Reason.NOT_STIX,
            pointer,
            f"the item at {pointer or '/'} is a JSON {type(obj).__name__}, not a STIX object: "
            "every item of 'objects' must be a JSON object",
        )
    object_type, object_id = obj.get("type"), obj.get("id")
    if not isinstance(object_type, str) or not (
        3 <= len(object_type) <= 250 and TYPE_NAME_RE.match(object_type)
    ):
        raise _reject(
            object_id,
            Reason.NOT_STIX if object_type is None else Reason.INVALID_PROPERTY,
            f"{pointer}/type",
            f"the object at {pointer or '/'} has type {object_type!r}: a STIX type is 3-250 "
            "lower-case letters, digits and hyphens (e.g. 'indicator')",
        )
    if object_id is None:
        raise _reject(
            None,
            Reason.MISSING_PROPERTY,
            f"{pointer}/id",
            f"the {object_type} at {pointer or '/'} has no id: add id '{object_type}--<uuid>'",
        )
    if not isinstance(object_id, str) or not IDENTIFIER_RE.match(object_id):
        raise _reject(
            object_id,
            Reason.INVALID_ID,
            f"{pointer}/id",
            f"{object_type} id {object_id!r} is not '<type>--<RFC 4122 UUID>': "
            f"use e.g. '{object_type}--' followed by a random (version 4) UUID",
        )
    if object_id.partition("--")[0] != object_type:
        raise _reject(
            object_id,
            Reason.INVALID_ID,
            f"{pointer}/id",
            f"id {object_id!r} does not start with the object's type {object_type!r}: "
            f"the id must be '{object_type}--<uuid>'",
        )
    return obj


def _check_spec_version(obj: dict[str, Any], label: str, pointer: str, is_sco: bool) -> None:
    version = obj.get("spec_version")
    if version == "2.1" or (version is None and is_sco):
        return
    if version is None:
        raise _reject(
            obj["id"],
            Reason.MISSING_PROPERTY,
            f"{pointer}/spec_version",
            f"{label} has no spec_version: STIX 2.1 objects must say spec_version '2.1'",
        )
    raise _reject(
        obj["id"],
        Reason.UNSUPPORTED_SPEC_VERSION,
        f"{pointer}/spec_version",
        f"{label} has spec_version {version!r}: the bus accepts STIX 2.1 (and upgrades 2.0)",
    )


_FORBIDDEN_COMMON_PROPERTIES = frozenset({"severity", "action", "username", "phone_numbers"})


def _check_top_level_values(obj: dict[str, Any], label: str, pointer: str) -> None:
    """STIX forbids null properties and empty lists; a few names are reserved."""
    for name, value in obj.items():
        if value is None or (isinstance(value, list) and not value):
            raise _reject(
                obj["id"],
                Reason.INVALID_PROPERTY,
                f"{pointer}/{json_pointer(name)[1:]}",
                f"{label}: property {name!r} is {'null' if value is None else 'an empty list'}; "
                "STIX does not allow that: omit the property instead",
            )
        if name in _FORBIDDEN_COMMON_PROPERTIES and obj["type"] != "marking-definition":
            raise _reject(
                obj["id"],
                Reason.INVALID_PROPERTY,
                f"{pointer}/{name}",
                f"{label}: property name {name!r} is reserved by STIX 2.1 and may not be used; "
                f"rename it (custom properties start with x_)",
            )


def _check_created_modified(obj: dict[str, Any], label: str, pointer: str) -> None:
    object_id = obj["id"]
    names = ("created",) if obj["type"] == "marking-definition" else ("created", "modified")
    check = check_timestamp if obj["type"] == "marking-definition" else check_timestamp_millis
    for name in names:
        value = obj.get(name)
        if value is None:
            raise _reject(
                object_id,
                Reason.MISSING_PROPERTY,
                f"{pointer}/{name}",
                f"{label} has no {name!r}: STIX 2.1 requires it (e.g. 2024-01-31T12:00:00.000Z)",
            )
        if not isinstance(value, str):
            raise _reject(
                object_id,
                Reason.INVALID_TIMESTAMP,
                f"{pointer}/{name}",
                f"{label}: {name!r} must be a timestamp string such as 2024-01-31T12:00:00.000Z",
            )
        try:
            check(value)
        except ValueError as exc:
            raise _reject(
                object_id, Reason.INVALID_TIMESTAMP, f"{pointer}/{name}", f"{label}: {name}: {exc}"
            ) from None
    if len(names) == 2:
        _check_modified_not_before_created(obj, label, pointer)


def _check_modified_not_before_created(obj: dict[str, Any], label: str, pointer: str) -> None:
    if timestamp_order_key(obj["modified"]) < timestamp_order_key(obj["created"]):
        raise _reject(
            obj["id"],
            Reason.MODIFIED_BEFORE_CREATED,
            f"{pointer}/modified",
            f"{label}: modified ({obj['modified']}) is before created ({obj['created']}); a "
            "version cannot predate the object: set modified >= created",
        )


def _validate_model(obj: dict[str, Any], label: str, pointer: str) -> StixObject | None:
    model_class = MODEL_BY_TYPE.get(obj["type"])
    if model_class is None:
        return None
    try:
        return model_class.model_validate(obj)
    except ValidationError as exc:
        raise _Rejected(
            [_rejection_from_pydantic(error, obj, label, pointer) for error in exc.errors()]
        ) from None


_TIMESTAMP_PROPERTIES = frozenset(
    {"created", "modified", "valid_from", "valid_until", "first_seen", "last_seen", "start_time",
     "stop_time", "first_observed", "last_observed"}
)  # fmt: skip


def _rejection_from_pydantic(
    error: Any, obj: dict[str, Any], label: str, pointer: str
) -> Rejection:
    location = tuple(error["loc"])
    where = pointer + json_pointer(*location)
    name = str(location[0]) if location else ""
    dotted = ".".join(str(part) for part in location)
    if error["type"] == "missing":
        reason = Reason.MISSING_PROPERTY
        message = (
            f"{label} lacks required property {dotted!r}: add it "
            f"(see the STIX 2.1 spec for {obj['type']})"
        )
    else:
        if name in _TIMESTAMP_PROPERTIES:
            reason = Reason.INVALID_TIMESTAMP
        elif name == "id" or name.endswith(("_ref", "_refs")):
            reason = Reason.INVALID_ID
        else:
            reason = Reason.INVALID_PROPERTY
        detail = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        message = f"{label}: property {dotted!r} is invalid: {detail}; fix the value and resend"
    return Rejection(object_id=obj["id"], reason=reason, pointer=where, message=message)


def _check_timestamp_order(obj: dict[str, Any], label: str, pointer: str) -> None:
    for later, operator, earlier in TIMESTAMP_ORDER_RULES.get(obj["type"], ()):
        later_value, earlier_value = obj.get(later), obj.get(earlier)
        if not (isinstance(later_value, str) and isinstance(earlier_value, str)):
            continue
        if not (TIMESTAMP_RE.match(later_value) and TIMESTAMP_RE.match(earlier_value)):
            continue  # an unmodelled type with a malformed timestamp: the OASIS check reports it
        later_key, earlier_key = (
            timestamp_order_key(later_value),
            timestamp_order_key(earlier_value),
        )
        if later_key > earlier_key or (operator == "ge" and later_key == earlier_key):
            continue
        relation = "after" if operator == "gt" else "at or after"
        raise _reject(
            obj["id"],
            _ORDER_REASON.get(obj["type"], Reason.INVALID_TIMESTAMP),
            f"{pointer}/{later}",
            f"{label}: {later} ({later_value}) must be {relation} {earlier} ({earlier_value}); "
            f"correct one of them",
        )


# --- markings and identity ---------------------------------------------------------------------
def _marking_refs(obj: dict[str, Any]) -> Iterable[tuple[str, Any]]:
    """(pointer suffix, marking id) for object-level and granular markings."""
    refs = obj.get("object_marking_refs")
    if isinstance(refs, list):
        for index, ref in enumerate(refs):
            yield f"/object_marking_refs/{index}", ref
    granular = obj.get("granular_markings")
    if isinstance(granular, list):
        for index, marking in enumerate(granular):
            if isinstance(marking, dict) and "marking_ref" in marking:
                yield f"/granular_markings/{index}/marking_ref", marking["marking_ref"]


def _object_tlp(
    obj: dict[str, Any], label: str, pointer: str, publisher: Org, known_markings: set[str]
) -> tuple[TLP, bool]:
    """The strictest TLP among the object's markings, or the publisher's default if it has none."""
    strictest: TLP | None = None
    for suffix, ref in _marking_refs(obj):
        tlp = MARKING_TLP.get(ref) if isinstance(ref, str) else None
        if tlp is not None:
            strictest = tlp if strictest is None else max(strictest, tlp)
        elif ref not in known_markings and ref != obj["id"]:
            raise _reject(
                obj["id"],
                Reason.UNKNOWN_MARKING,
                pointer + suffix,
                f"{label} is marked with {ref!r}, which the bus does not know: use a TLP 1.0/2.0 "
                "marking id, or include that marking-definition in the same bundle",
            )
    if strictest is None:
        return publisher.default_tlp, True
    return strictest, False


def _bind_creator(
    obj: dict[str, Any], label: str, pointer: str, submission: Submission
) -> dict[str, Any]:
    """Apply the identity rules: the ingest topic, not the payload, says who published."""
    publisher, registry = submission.publisher, submission.registry
    if obj["type"] == "identity":
        owner = registry.by_identity.get(obj["id"])
        if obj["id"] == registry.bus.identity_id or (
            owner is not None and owner.id != publisher.id
        ):
            raise _reject(
                obj["id"],
                Reason.IMPERSONATION,
                f"{pointer}/id",
                f"{label} is the identity of "
                f"{'the bus' if owner is None else repr(owner.id)}; only that member may publish "
                "it: remove it from the bundle",
            )
    creator = obj.get("created_by_ref")
    if creator is None:
        return {**obj, "created_by_ref": publisher.identity_id}
    if creator == publisher.identity_id:
        return obj
    owner = registry.by_identity.get(creator)
    if owner is not None or creator == registry.bus.identity_id:
        name = "the bus" if owner is None else f"member {owner.id!r}"
        raise _reject(
            obj["id"],
            Reason.IMPERSONATION,
            f"{pointer}/created_by_ref",
            f"{label} claims to be created by {name} ({creator}), but arrived from "
            f"{publisher.id!r}: publish only your own objects (omit created_by_ref or use "
            f"{publisher.identity_id})",
        )
    if not publisher.may_relay_third_party:
        raise _reject(
            obj["id"],
            Reason.RELAY_NOT_ALLOWED,
            f"{pointer}/created_by_ref",
            f"{label} was created by {creator}, an identity outside the registry, and "
            f"{publisher.id!r} may not relay third-party intelligence: publish it as your own "
            "(omit created_by_ref) or ask the operator for relay rights",
        )
    return obj


# --- canonical SCOs ----------------------------------------------------------------------------
def _canonical_sco(obj: dict[str, Any], label: str, pointer: str) -> tuple[str | None, list[str]]:
    """Deterministic id of the SCO's canonical value, plus warnings (homographs)."""
    try:
        if obj["type"] == "file":
            hashes = obj.get("hashes") or {}
            canonical_hashes = {
                name: canonical_hash(name, value).value for name, value in hashes.items()
            }
            canonical = {**obj, "hashes": canonical_hashes} if canonical_hashes else obj
            return deterministic_sco_id(canonical), []
        value = canonical_observable(obj["type"], ("value",), obj["value"])
    except CanonicalError as exc:
        raise _reject(
            obj["id"], Reason.INVALID_PROPERTY, _sco_value_pointer(obj, pointer), f"{label}: {exc}"
        ) from None
    return deterministic_sco_id({"type": obj["type"], "value": value.value}), list(value.warnings)


def _sco_value_pointer(obj: dict[str, Any], pointer: str) -> str:
    return f"{pointer}/hashes" if obj["type"] == "file" else f"{pointer}/value"


# --- the OASIS validator, for what the fast path does not model --------------------------------
def _needs_official_validation(obj: dict[str, Any], object_type: str) -> bool:
    if object_type not in FAST_PATH_TYPES:
        return True
    known = MODEL_BY_TYPE[object_type].model_fields
    for name in obj:
        if name in known:
            continue
        if name in OFFICIALLY_CHECKED_PROPERTIES:
            return True
        if not FAST_CUSTOM_PROPERTY.match(name) or name.endswith(("_bin", "_hex")):
            return True
    return bool(obj.get("granular_markings"))


def _check_with_oasis_validator(obj: dict[str, Any], label: str, pointer: str) -> None:
    from stixbus.core.oasis import oasis_errors

    errors = oasis_errors(obj)
    if errors:
        raise _Rejected(
            [
                Rejection(
                    object_id=obj["id"],
                    reason=Reason.INVALID_PROPERTY,
                    pointer=pointer,
                    message=(
                        f"{label} fails the OASIS STIX 2.1 validator: {error}; fix it and resend"
                    ),
                )
                for error in errors
            ]
        )


# --- duplicates --------------------------------------------------------------------------------
def _reject_repeated_versions(
    objects: list[Any], results: list[_Accepted | list[Rejection] | None], pointer_prefix: str
) -> None:
    """A version is (id, modified): the same one twice in a submission is ambiguous or redundant."""
    first_seen: dict[tuple[str, Any], int] = {}
    for index, result in enumerate(results):
        if not isinstance(result, _Accepted):
            continue
        version = (result.object["id"], result.object.get("modified"))
        earlier = first_seen.setdefault(version, index)
        if earlier == index:
            continue
        earlier_result = results[earlier]
        assert isinstance(earlier_result, _Accepted)
        same = earlier_result.object == result.object
        where = f"{pointer_prefix}/{earlier}"
        results[index] = [
            Rejection(
                object_id=version[0],
                reason=Reason.DUPLICATE_OBJECT if same else Reason.VERSION_CONFLICT,
                pointer=f"{pointer_prefix}/{index}",
                message=(
                    f"{version[0]} (modified {version[1]}) already appears at {where}"
                    + (
                        ": send each version once"
                        if same
                        else " with different content; a version is (id, modified): bump "
                        "modified for a new version"
                    )
                ),
            )
        ]


# --- output records ----------------------------------------------------------------------------
_NORMALIZED_FIELDS = set(NormalizedObject.model_fields)
_set_attribute = object.__setattr__


def _normalized_object(accepted: _Accepted, submission: Submission) -> NormalizedObject:
    """The output record, built without re-validating what was validated already: the values
    below have exactly the model's types (a test checks the result equals the validated model),
    and pydantic's `model_construct` is slower than validating, so this is a lean equivalent of
    it (every field set, no extras, no private attributes)."""
    obj = accepted.object
    values = {
        "submission_id": submission.submission_id,
        "publisher": submission.publisher.id,
        "received_at": submission.received_at,
        "published_at": submission.published_at,
        "object_id": obj["id"],
        "object_type": obj["type"],
        "modified": obj.get("modified"),
        "tlp": accepted.tlp,
        "tlp_inherited": accepted.tlp_inherited,
        "dedup_key": accepted.dedup_key,
        "canonical_pattern": accepted.canonical_pattern,
        "observable_types": list(accepted.observable_types),
        "canonical_sco_id": accepted.canonical_sco_id,
        "object": obj,
    }
    modified = values["modified"]
    if not (
        submission.plain_types
        and (modified is None or type(modified) is str)
        and type(values["tlp"]) is TLP
    ):
        return NormalizedObject(**values)  # unusual values: let pydantic check (or refuse) them
    record = NormalizedObject.__new__(NormalizedObject)
    _set_attribute(record, "__dict__", values)
    _set_attribute(record, "__pydantic_fields_set__", _NORMALIZED_FIELDS.copy())
    _set_attribute(record, "__pydantic_extra__", None)
    _set_attribute(record, "__pydantic_private__", None)
    return record


def _reject_whole(
    raw: bytes, submission: Submission, reason: Reason, pointer: str, message: str
) -> NormaliseOutcome:
    rejection = Rejection(reason=reason, pointer=pointer, message=message)
    return _outcome(raw, submission, [], [rejection], rejected_count=1, warnings=[])


def _outcome(
    raw: bytes,
    submission: Submission,
    accepted: list[NormalizedObject],
    rejections: list[Rejection],
    rejected_count: int,
    warnings: list[str],
) -> NormaliseOutcome:
    receipt = Receipt(
        submission_id=submission.submission_id,
        publisher=submission.publisher.id,
        received_at=submission.received_at,
        accepted=len(accepted),
        rejected=rejected_count,
        accepted_ids=[a.object_id for a in accepted],
        rejections=rejections,
        warnings=list(dict.fromkeys(warnings)),
    )
    dead_letter = None
    if rejections:
        try:
            payload, encoding = raw.decode("utf-8"), "utf-8"
            if len(orjson.dumps(payload)) > len(raw) * 4 // 3 + 16:
                # Control characters escape to 6 bytes each in JSON: base64 bounds the dead
                # letter at 4/3 of the submission, so it always fits a stixbus record.
                payload, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        dead_letter = DeadLetter(
            submission_id=submission.submission_id,
            publisher=submission.publisher.id,
            received_at=submission.received_at,
            reasons=rejections,
            payload=payload,
            payload_encoding=encoding,
        )
    return NormaliseOutcome(
        accepted=accepted, receipt=receipt, dead_letter=dead_letter, rejections=rejections
    )
