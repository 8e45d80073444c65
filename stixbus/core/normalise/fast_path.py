"""The plain-indicator fast path (pure): one pass over the commonest object, no pydantic."""

from __future__ import annotations

import re
from typing import Any

from schemas.stix import (
    IDENTIFIER_PATTERN,
    PLAIN_TIMESTAMP_MILLIS_RE,
    PLAIN_TIMESTAMP_RE,
    timestamp_order_key,
)
from stixbus.core.canonical import dedup_key
from stixbus.core.normalise.checks import bind_creator, object_tlp
from stixbus.core.normalise.handling import carry_tlp, strip_bus_properties
from stixbus.core.normalise.outcome import (
    Accepted,
    Submission,
)
from stixbus.core.pattern import PatternError, parse_pattern

# --- the plain indicator: one pass, no pydantic --------------------------------------------------
# The commonest object by far.  `accept_plain_indicator` checks, with cheap sufficient
# conditions, everything `accept_object` checks up to the pattern (identity, spec_version, the
# Indicator model, null/empty values, timestamps and their order, no property that needs the
# OASIS validator); on the first doubt it returns None and `accept_object` decides, and reports
# the problem, as before.  From the pattern on it runs the same code as `accept_object`.
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
_ID_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
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


def accept_plain_indicator(
    obj: dict[str, Any], pointer: str, submission: Submission, known_markings: set[str]
) -> Accepted | None:
    """Accept a plain STIX 2.1 indicator, or None when `accept_object` must decide."""
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

    # From here on: what `accept_object` does for an indicator that got this far.
    parsed_pattern = None
    warnings: tuple[str, ...] = ()
    if pattern_type == "stix":
        try:
            parsed_pattern = parse_pattern(
                pattern, get("pattern_version") or "2.1", official=not submission.defer_heavy
            )
        except PatternError:
            return None  # `accept_object` reports it
        if parsed_pattern.warnings:
            warnings = tuple(f"{pointer or '/'}/pattern: {w}" for w in parsed_pattern.warnings)
    publisher = submission.publisher
    label = f"indicator {object_id}"
    obj, forged = strip_bus_properties(obj, label, pointer)
    tlp, tlp_inherited, tlp_warning = object_tlp(obj, label, pointer, publisher, known_markings)
    extra = tuple(f"{pointer or '/'}: {w}" for w in (tlp_warning,) if w)
    warnings = warnings + ((forged,) if forged else ()) + extra
    obj = carry_tlp(obj, tlp)
    if "created_by_ref" in obj:
        obj = bind_creator(obj, f"indicator {object_id}", pointer, submission)
    else:
        obj = {**obj, "created_by_ref": publisher.identity_id}
    if parsed_pattern is None:
        return Accepted(obj, tlp, tlp_inherited, warnings=warnings)
    canonical = parsed_pattern.canonical
    return Accepted(
        obj,
        tlp,
        tlp_inherited,
        canonical,
        dedup_key(canonical, submission.registry.bus.namespace),
        parsed_pattern.observable_types,
        None,
        warnings,
    )
