"""Per-object checks (pure): identity, spec version, models, timestamps, markings, creator
binding, canonical SCOs and the OASIS validator for what the models do not cover."""

from __future__ import annotations

import gc
import re
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from schemas.envelope import Reason, Rejection
from schemas.org import Org
from schemas.stix import (
    IDENTIFIER_RE,
    MODEL_BY_TYPE,
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
from stixbus.core.normalise.handling import (
    carry_tlp,
    effective_tlp,
    standard_tlp_problem,
    strip_bus_properties,
)
from stixbus.core.normalise.outcome import (
    Accepted,
    Rejected,
    Submission,
    reject,
)
from stixbus.core.pattern import PatternError, PatternTooComplex, parse_pattern
from stixbus.core.payload import json_pointer
from stixbus.core.upgrade import NotLossless, is_stix20_object, upgrade_object

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


def check_object(
    obj: Any,
    pointer: str,
    bundle_is_20: bool,
    submission: Submission,
    known_markings: set[str],
) -> Accepted | list[Rejection]:
    try:
        return accept_object(obj, pointer, bundle_is_20, submission, known_markings)
    except Rejected as rejected:
        return rejected.rejections


def accept_object(
    obj: Any,
    pointer: str,
    bundle_is_20: bool,
    submission: Submission,
    known_markings: set[str],
) -> Accepted:
    obj = _check_identity_of_object(obj, pointer)
    object_id, object_type = obj["id"], obj["type"]
    label = f"{object_type} {object_id}"
    warnings: list[str] = []
    if is_stix20_object(obj, bundle_is_20):
        try:
            upgraded = upgrade_object(obj)
        except NotLossless as exc:
            raise reject(
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
    _check_refs(obj, label, pointer)
    if not is_sco and object_type not in MODEL_BY_TYPE:
        _check_created_modified(obj, label, pointer)  # the models check these themselves
    model = validate_model(obj, label, pointer)
    if model is not None and "modified" in obj and "created" in obj:
        _check_modified_not_before_created(obj, label, pointer)
    _check_timestamp_order(obj, label, pointer)

    parsed_pattern = None
    if isinstance(model, Indicator) and model.pattern_type == "stix":
        try:
            parsed_pattern = parse_pattern(
                model.pattern, model.pattern_version or "2.1", official=not submission.defer_heavy
            )
        except PatternError as exc:
            reason = (
                Reason.PATTERN_TOO_COMPLEX
                if isinstance(exc, PatternTooComplex)
                else Reason.INVALID_PATTERN
            )
            raise reject(object_id, reason, f"{pointer}/pattern", f"{label}: {exc}") from None
        warnings.extend(f"{pointer or '/'}/pattern: {w}" for w in parsed_pattern.warnings)

    obj, forged = strip_bus_properties(obj, label, pointer)
    if forged:
        warnings.append(forged)
    tlp, tlp_inherited, tlp_warning = object_tlp(
        obj, label, pointer, submission.publisher, known_markings
    )
    if tlp_warning:
        warnings.append(f"{pointer or '/'}: {tlp_warning}")
    is_standard_tlp_definition = object_id in MARKING_TLP
    if is_standard_tlp_definition and (problem := standard_tlp_problem(obj)) is not None:
        raise reject(
            object_id,
            Reason.REDEFINED_TLP,
            pointer,
            f"{label} reuses a standard TLP marking id with another definition: it {problem}; "
            "leave standard TLP definitions out (the bus knows them) or use your own id",
        )
    if not is_sco and not is_standard_tlp_definition:
        obj = bind_creator(obj, label, pointer, submission)

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
            _check_with_oasis_validator(obj, label, pointer, submission)
        finally:
            if submission.collector_paused:
                gc.disable()

    return Accepted(
        object=carry_tlp(obj, tlp),
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
        raise reject(
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
        raise reject(
            object_id,
            Reason.NOT_STIX if object_type is None else Reason.INVALID_PROPERTY,
            f"{pointer}/type",
            f"the object at {pointer or '/'} has type {object_type!r}: a STIX type is 3-250 "
            "lower-case letters, digits and hyphens (e.g. 'indicator')",
        )
    if object_type == "bundle":
        # A bundle is a transport envelope, not an object: inside another one its objects would
        # skip every per-object check (identity, markings, patterns) and leave at the
        # publisher's default TLP.
        raise reject(
            object_id,
            Reason.NESTED_BUNDLE,
            pointer,
            f"the item at {pointer or '/'} is a bundle inside the bundle: the bus checks and "
            "routes objects one by one, so put its objects directly in the outer bundle's "
            "'objects' (or send it as its own submission)",
        )
    if object_id is None:
        raise reject(
            None,
            Reason.MISSING_PROPERTY,
            f"{pointer}/id",
            f"the {object_type} at {pointer or '/'} has no id: add id '{object_type}--<uuid>'",
        )
    if not isinstance(object_id, str) or not IDENTIFIER_RE.match(object_id):
        raise reject(
            object_id,
            Reason.INVALID_ID,
            f"{pointer}/id",
            f"{object_type} id {object_id!r} is not '<type>--<RFC 4122 UUID in lower case>': "
            f"use e.g. '{object_type}--' followed by a random (version 4) UUID, lower-case hex",
        )
    if object_id.partition("--")[0] != object_type:
        raise reject(
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
        raise reject(
            obj["id"],
            Reason.MISSING_PROPERTY,
            f"{pointer}/spec_version",
            f"{label} has no spec_version: STIX 2.1 objects must say spec_version '2.1'",
        )
    raise reject(
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
            raise reject(
                obj["id"],
                Reason.INVALID_PROPERTY,
                f"{pointer}/{json_pointer(name)[1:]}",
                f"{label}: property {name!r} is {'null' if value is None else 'an empty list'}; "
                "STIX does not allow that: omit the property instead",
            )
        if name in _FORBIDDEN_COMMON_PROPERTIES and obj["type"] != "marking-definition":
            raise reject(
                obj["id"],
                Reason.INVALID_PROPERTY,
                f"{pointer}/{name}",
                f"{label}: property name {name!r} is reserved by STIX 2.1 and may not be used; "
                f"rename it (custom properties start with x_)",
            )


# What the common reference properties may point at (STIX 2.1 §3.2, §5, §7); the validator
# checks some of these only as plain identifiers.
_REF_TARGET_TYPES: dict[str, frozenset[str]] = {
    "created_by_ref": frozenset({"identity"}),
    "object_marking_refs": frozenset({"marking-definition"}),
    "where_sighted_refs": frozenset({"identity", "location"}),
    "observed_data_refs": frozenset({"observed-data"}),
}


def _check_refs(obj: dict[str, Any], label: str, pointer: str) -> None:
    """Every top-level `*_ref` is an identifier (lower case) and every `*_refs` a list of them,
    of the type the property allows when STIX says which."""
    for name, value in obj.items():
        if name.endswith("_ref"):
            refs: list[tuple[str, Any]] = [(f"/{json_pointer(name)[1:]}", value)]
        elif name.endswith("_refs"):
            if not isinstance(value, list):
                raise reject(
                    obj["id"],
                    Reason.INVALID_PROPERTY,
                    f"{pointer}/{json_pointer(name)[1:]}",
                    f"{label}: {name!r} must be a list of STIX identifiers",
                )
            refs = [(f"/{json_pointer(name)[1:]}/{i}", ref) for i, ref in enumerate(value)]
        else:
            continue
        allowed = _REF_TARGET_TYPES.get(name)
        for suffix, ref in refs:
            if not isinstance(ref, str) or not IDENTIFIER_RE.match(ref):
                raise reject(
                    obj["id"],
                    Reason.INVALID_ID,
                    pointer + suffix,
                    f"{label}: {name} {ref!r} is not a STIX identifier "
                    "'<type>--<RFC 4122 UUID in lower case>': fix the reference",
                )
            if allowed is not None and ref.partition("--")[0] not in allowed:
                raise reject(
                    obj["id"],
                    Reason.WRONG_REF_TYPE,
                    pointer + suffix,
                    f"{label}: {name} points at {ref!r}, but it may only reference "
                    f"{' or '.join(sorted(allowed))} objects: fix the reference",
                )


def _check_created_modified(obj: dict[str, Any], label: str, pointer: str) -> None:
    object_id = obj["id"]
    names = ("created",) if obj["type"] == "marking-definition" else ("created", "modified")
    check = check_timestamp if obj["type"] == "marking-definition" else check_timestamp_millis
    for name in names:
        value = obj.get(name)
        if value is None:
            raise reject(
                object_id,
                Reason.MISSING_PROPERTY,
                f"{pointer}/{name}",
                f"{label} has no {name!r}: STIX 2.1 requires it (e.g. 2024-01-31T12:00:00.000Z)",
            )
        if not isinstance(value, str):
            raise reject(
                object_id,
                Reason.INVALID_TIMESTAMP,
                f"{pointer}/{name}",
                f"{label}: {name!r} must be a timestamp string such as 2024-01-31T12:00:00.000Z",
            )
        try:
            check(value)
        except ValueError as exc:
            raise reject(
                object_id, Reason.INVALID_TIMESTAMP, f"{pointer}/{name}", f"{label}: {name}: {exc}"
            ) from None
    if len(names) == 2:
        _check_modified_not_before_created(obj, label, pointer)


def _check_modified_not_before_created(obj: dict[str, Any], label: str, pointer: str) -> None:
    if timestamp_order_key(obj["modified"]) < timestamp_order_key(obj["created"]):
        raise reject(
            obj["id"],
            Reason.MODIFIED_BEFORE_CREATED,
            f"{pointer}/modified",
            f"{label}: modified ({obj['modified']}) is before created ({obj['created']}); a "
            "version cannot predate the object: set modified >= created",
        )


def validate_model(obj: dict[str, Any], label: str, pointer: str) -> StixObject | None:
    model_class = MODEL_BY_TYPE.get(obj["type"])
    if model_class is None:
        return None
    try:
        return model_class.model_validate(obj)
    except ValidationError as exc:
        raise Rejected(
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
        raise reject(
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


def object_tlp(
    obj: dict[str, Any], label: str, pointer: str, publisher: Org, known_markings: set[str]
) -> tuple[TLP, bool, str | None]:
    """(effective TLP, inherited, warning): the strictest of the object's TLP markings and
    `tlp:` labels, or the publisher's default if it has neither (handling.effective_tlp)."""
    strictest: TLP | None = None
    unroutable: list[str] = []
    for suffix, ref in _marking_refs(obj):
        tlp = MARKING_TLP.get(ref) if isinstance(ref, str) else None
        if tlp is not None:
            strictest = tlp if strictest is None else max(strictest, tlp)
            continue
        if ref != obj["id"]:
            unroutable.append(str(ref))
        if ref not in known_markings and ref != obj["id"]:
            raise reject(
                obj["id"],
                Reason.UNKNOWN_MARKING,
                pointer + suffix,
                f"{label} is marked with {ref!r}, which the bus does not know: use a TLP 1.0/2.0 "
                "marking id, or publish that marking-definition (in this bundle or before)",
            )
    tlp, inherited, warning = effective_tlp(strictest, obj, publisher.default_tlp, label)
    if unroutable:
        blocked = (
            f"{label} carries non-TLP marking(s) {', '.join(sorted(set(unroutable)))}: accepted, "
            "but the bus routes only objects whose markings are all TLP, so it will reach no "
            "subscriber (decide: unknown_marking); drop those markings to share it"
        )
        warning = blocked if warning is None else f"{warning}; {blocked}"
    return tlp, inherited, warning


def bind_creator(
    obj: dict[str, Any], label: str, pointer: str, submission: Submission
) -> dict[str, Any]:
    """Apply the identity rules: the ingest topic, not the payload, says who published."""
    publisher, registry = submission.publisher, submission.registry
    if obj["type"] == "identity":
        owner = registry.by_identity.get(obj["id"])
        if obj["id"] == registry.bus.identity_id or (
            owner is not None and owner.id != publisher.id
        ):
            raise reject(
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
    if not isinstance(creator, str) or not creator.startswith("identity--"):
        raise reject(
            obj["id"],
            Reason.WRONG_REF_TYPE,
            f"{pointer}/created_by_ref",
            f"{label}: created_by_ref {creator!r} is not an identity: it must reference the "
            f"identity that created the object (omit it, or use {publisher.identity_id})",
        )
    owner = registry.by_identity.get(creator)
    if owner is not None or creator == registry.bus.identity_id:
        name = "the bus" if owner is None else f"member {owner.id!r}"
        raise reject(
            obj["id"],
            Reason.IMPERSONATION,
            f"{pointer}/created_by_ref",
            f"{label} claims to be created by {name} ({creator}), but arrived from "
            f"{publisher.id!r}: publish only your own objects (omit created_by_ref or use "
            f"{publisher.identity_id})",
        )
    if not publisher.may_relay_third_party:
        raise reject(
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
        raise reject(
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


def _check_with_oasis_validator(
    obj: dict[str, Any], label: str, pointer: str, submission: Submission
) -> None:
    from stixbus.core.oasis import OasisValidatorDeferred, oasis_errors

    if submission.defer_heavy:
        raise OasisValidatorDeferred(obj["id"])
    errors = oasis_errors(obj)
    if errors:
        raise Rejected(
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
