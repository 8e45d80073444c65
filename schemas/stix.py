"""Pydantic models of the STIX 2.1 objects the bus routes, as strict as the OASIS JSON schemas.

Every model allows extra properties (custom `x_` properties are legal STIX); the normalise stage
decides what to do with them.  Timestamps are checked with the STIX rule (RFC 3339, UTC with Z,
a real calendar date); `created`/`modified` on SDOs and SROs need millisecond precision.
Cross-property rules (modified >= created, valid_until > valid_from, ...) live in
`TIMESTAMP_ORDER_RULES` so the caller can report them with their own reason.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

# Lower-case hex only (stricter than the OASIS validator, which accepts upper case): one object
# must have one id, or 'indicator--ABC…' and 'indicator--abc…' would be two owners' objects.
IDENTIFIER_PATTERN = (
    r"^[a-z][a-z0-9-]+[a-z0-9]--[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}"
    r"-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)
IDENTIFIER_RE = re.compile(IDENTIFIER_PATTERN)
TYPE_NAME_RE = re.compile(r"^([a-z][a-z0-9]*)+(-[a-z0-9]+)*-?$")
TIMESTAMP_RE = re.compile(
    r"^([0-9]{4})-(0[1-9]|1[012])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):([0-5][0-9])"
    r":([0-5][0-9]|60)(\.[0-9]+)?Z$"
)
_MILLIS_RE = re.compile(r"T\d{2}:\d{2}:\d{2}\.\d{3,}Z$")


def check_timestamp(value: str) -> str:
    """RFC 3339 UTC timestamp with Z, on a date that exists (no 31 February, no leap second:
    the OASIS validator's date parser rejects second 60 too)."""
    match = TIMESTAMP_RE.match(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a STIX timestamp: write YYYY-MM-DDTHH:MM:SS[.sss]Z in UTC"
        )
    # The regex bounds every field; only days 29-31 and second 60 can still be impossible.
    if value[8:10] in ("29", "30", "31") or value[17] == "6":
        try:
            datetime(int(value[:4]), int(value[5:7]), int(value[8:10]), 0, 0, int(value[17:19]))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a real date and time ({exc})") from None
    return value


def check_timestamp_millis(value: str) -> str:
    check_timestamp(value)
    if not _MILLIS_RE.search(value):
        raise ValueError(
            f"{value!r} must have millisecond precision on created/modified: "
            "write e.g. 2024-01-31T12:00:00.000Z"
        )
    return value


# Sufficient (not necessary) conditions for `check_timestamp` / `check_timestamp_millis`, for
# the normalise fast path (use with `fullmatch`): a year other than 0000 and a day that exists
# in every year for that month (29 February and leap seconds are left to the full check).
_PLAIN_DATE_TIME = (
    r"(?!0000)[0-9]{4}-(?:(?:0[1-9]|1[012])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[012])-(?:29|30)"
    r"|(?:0[13578]|1[02])-31)T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
)
PLAIN_TIMESTAMP_RE = re.compile(_PLAIN_DATE_TIME + r"(?:\.[0-9]+)?Z")
PLAIN_TIMESTAMP_MILLIS_RE = re.compile(_PLAIN_DATE_TIME + r"\.[0-9]{3,}Z")


def timestamp_order_key(value: str) -> tuple[str, str]:
    """Sortable key of a valid STIX timestamp: fixed-width seconds, then the fraction digits
    without trailing zeros (so .5 and .500 compare equal and .25 < .5 compares as text)."""
    fraction = value[20:-1] if len(value) > 20 and value[19] == "." else ""
    return value[:19], fraction.rstrip("0")


Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN)]
Timestamp = Annotated[str, AfterValidator(check_timestamp)]
TimestampMillis = Annotated[str, AfterValidator(check_timestamp_millis)]
NonEmptyStrings = Annotated[list[str], Field(min_length=1)]
Identifiers = Annotated[list[Identifier], Field(min_length=1)]

_FORBIDDEN_SOURCE_TARGET = re.compile(
    r"^(relationship|sighting|bundle|marking-definition|language-content)--"
)


def _not_sro_ref(value: str) -> str:
    if _FORBIDDEN_SOURCE_TARGET.match(value):
        raise ValueError(
            f"{value!r} may not be referenced here: point at an SDO or SCO, not a relationship, "
            "sighting, bundle, marking-definition or language-content"
        )
    return value


def _observed_data_ref(value: str) -> str:
    if not value.startswith("observed-data--"):
        raise ValueError(f"{value!r} must be an observed-data id")
    return value


def _where_sighted_ref(value: str) -> str:
    if not value.startswith(("identity--", "location--")):
        raise ValueError(f"{value!r} must be an identity or location id")
    return value


def _marking_ref(value: str) -> str:
    if not value.startswith("marking-definition--"):
        raise ValueError(f"{value!r} must be a marking-definition id")
    return value


SdoOrScoRef = Annotated[Identifier, AfterValidator(_not_sro_ref)]
MarkingRef = Annotated[Identifier, AfterValidator(_marking_ref)]


class GranularMarking(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    selectors: Annotated[
        list[
            Annotated[
                str,
                StringConstraints(
                    pattern=r"^([a-z0-9_-]{3,249}(\.(\[\d+\]|[a-z0-9_-]{1,250}))*|id)$"
                ),
            ]
        ],
        Field(min_length=1),
    ]
    marking_ref: MarkingRef
    lang: str | None = None


class StixObject(BaseModel):
    """Properties common to every STIX 2.1 object the bus models."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    type: str
    id: Identifier
    object_marking_refs: Annotated[list[MarkingRef], Field(min_length=1)] | None = None
    granular_markings: Annotated[list[GranularMarking], Field(min_length=1)] | None = None


class DomainObject(StixObject):
    """SDO/SRO common properties (STIX 2.1 §3.2)."""

    spec_version: Literal["2.1"]
    created: TimestampMillis
    modified: TimestampMillis
    created_by_ref: Identifier | None = None
    revoked: bool | None = None
    labels: NonEmptyStrings | None = None
    confidence: Annotated[int, Field(ge=0, le=100)] | None = None


class Indicator(DomainObject):
    type: Literal["indicator"]
    name: str | None = None
    description: str | None = None
    indicator_types: NonEmptyStrings | None = None
    pattern: str
    pattern_type: str
    pattern_version: str | None = None
    valid_from: Timestamp
    valid_until: Timestamp | None = None


class Identity(DomainObject):
    type: Literal["identity"]
    name: str
    description: str | None = None
    roles: NonEmptyStrings | None = None
    identity_class: str | None = None
    sectors: NonEmptyStrings | None = None
    contact_information: str | None = None


class Relationship(DomainObject):
    type: Literal["relationship"]
    relationship_type: Annotated[str, StringConstraints(pattern=r"^[a-z0-9\-]+$")]
    description: str | None = None
    source_ref: SdoOrScoRef
    target_ref: SdoOrScoRef
    start_time: Timestamp | None = None
    stop_time: Timestamp | None = None


class Sighting(DomainObject):
    type: Literal["sighting"]
    description: str | None = None
    first_seen: Timestamp | None = None
    last_seen: Timestamp | None = None
    count: Annotated[int, Field(ge=0, le=999_999_999)] | None = None
    sighting_of_ref: SdoOrScoRef
    observed_data_refs: (
        Annotated[
            list[Annotated[Identifier, AfterValidator(_observed_data_ref)]], Field(min_length=1)
        ]
        | None
    ) = None
    where_sighted_refs: (
        Annotated[
            list[Annotated[Identifier, AfterValidator(_where_sighted_ref)]], Field(min_length=1)
        ]
        | None
    ) = None
    summary: bool | None = None


class ObservedData(DomainObject):
    type: Literal["observed-data"]
    first_observed: Timestamp
    last_observed: Timestamp
    number_observed: Annotated[int, Field(ge=1, le=999_999_999)]
    object_refs: Identifiers | None = None
    objects: dict[str, Any] | None = None


class MarkingDefinition(StixObject):
    type: Literal["marking-definition"]
    spec_version: Literal["2.1"]
    created: Timestamp
    created_by_ref: Identifier | None = None
    name: str | None = None
    definition_type: str | None = None
    definition: dict[str, Any] | None = None


class CyberObservable(StixObject):
    """SCO common properties (STIX 2.1 §6.1)."""

    spec_version: Literal["2.1"] | None = None
    defanged: bool | None = None


class Ipv4Address(CyberObservable):
    type: Literal["ipv4-addr"]
    value: str
    resolves_to_refs: NonEmptyStrings | None = None
    belongs_to_refs: NonEmptyStrings | None = None


class Ipv6Address(CyberObservable):
    type: Literal["ipv6-addr"]
    value: str
    resolves_to_refs: NonEmptyStrings | None = None
    belongs_to_refs: NonEmptyStrings | None = None


class DomainName(CyberObservable):
    type: Literal["domain-name"]
    value: str
    resolves_to_refs: NonEmptyStrings | None = None


class Url(CyberObservable):
    type: Literal["url"]
    value: str


class EmailAddress(CyberObservable):
    type: Literal["email-addr"]
    value: str
    display_name: str | None = None
    belongs_to_ref: str | None = None


class File(CyberObservable):
    type: Literal["file"]
    hashes: dict[str, str] | None = None
    size: Annotated[int, Field(ge=0)] | None = None
    name: str | None = None
    mime_type: str | None = None
    parent_directory_ref: str | None = None
    content_ref: str | None = None


MODEL_BY_TYPE: dict[str, type[StixObject]] = {
    "indicator": Indicator,
    "identity": Identity,
    "relationship": Relationship,
    "sighting": Sighting,
    "observed-data": ObservedData,
    "marking-definition": MarkingDefinition,
    "ipv4-addr": Ipv4Address,
    "ipv6-addr": Ipv6Address,
    "domain-name": DomainName,
    "url": Url,
    "email-addr": EmailAddress,
    "file": File,
}

SCO_TYPES = frozenset({"ipv4-addr", "ipv6-addr", "domain-name", "url", "email-addr", "file"})

# (later, operator, earlier): `later` must be >= (ge) or > (gt) `earlier`, per STIX 2.1.
TIMESTAMP_ORDER_RULES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "indicator": (("valid_until", "gt", "valid_from"),),
    "relationship": (("stop_time", "gt", "start_time"),),
    "sighting": (("last_seen", "ge", "first_seen"),),
    "observed-data": (("last_observed", "ge", "first_observed"),),
    "campaign": (("last_seen", "ge", "first_seen"),),
    "infrastructure": (("last_seen", "ge", "first_seen"),),
    "intrusion-set": (("last_seen", "ge", "first_seen"),),
    "malware": (("last_seen", "ge", "first_seen"),),
    "threat-actor": (("last_seen", "ge", "first_seen"),),
}
