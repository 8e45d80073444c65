"""Sharing agreements: who may receive which objects from whom, at which TLP, for what purpose.

An agreement is data (YAML in the repo, a compacted topic at run time), validated here and never
interpreted here: `stixbus.core.decide` evaluates it,
`stixbus.core.redact` applies its transformations,
`stixbus.core.lint` checks a whole set against the org registry.

Ambiguity fails closed: object and observable type lists must be spelled out (`["*"]` is the
explicit "any"), a term must have an end, and timestamps must carry a timezone.

Regenerate the committed JSON Schema with `python -m schemas.agreement`.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from schemas.org import ORG_ID_PATTERN, Sector
from schemas.tlp import TLP
from stixbus.errors import ConfigError, NotFound

ANY = "*"
ALL_CUSTOM_PROPERTIES = "x_*"
SECTOR_PREFIX = "sector:"

AGREEMENT_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,78}[a-z0-9]$"
_SECTOR_ALTERNATIVES = "|".join(s.value for s in Sector)
PARTY_PATTERN = rf"^(sector:({_SECTOR_ALTERNATIVES})|{ORG_ID_PATTERN[1:-1]})$"
CUSTOM_PROPERTY_PATTERN = r"^x_[a-z0-9_]{1,248}$"
DROP_PROPERTY_PATTERN = r"^x_(\*|[a-z0-9_]{1,248})$"
STIX_TYPE_PATTERN = r"^(\*|[a-z0-9][a-z0-9-]{1,248}[a-z0-9])$"
TAG_PATTERN = r"^\S(.{0,254}\S)?$"
WARNINGLIST_PATTERN = r"^(\*|[a-z0-9][a-z0-9_-]{0,78}[a-z0-9])$"
MEMBER_LIST_PREFIX = "member-"  # stixbus.core.guard.MEMBER_PREFIX

# Properties whose value the bus must not pseudonymise: identity, versioning, detection logic and
# markings.  Creator references are governed by the attribution mode instead.
NOT_PSEUDONYMISABLE = frozenset(
    {
        "type",
        "id",
        "spec_version",
        "created",
        "modified",
        "revoked",
        "created_by_ref",
        "object_marking_refs",
        "granular_markings",
        "extensions",
        "pattern",
        "pattern_type",
        "pattern_version",
        "valid_from",
        "valid_until",
        "confidence",
        "lang",
        "external_references",
    }
)


def _parse_tlp(value: object) -> object:
    return TLP.parse(value) if isinstance(value, str) else value


TLPName = Annotated[
    TLP,
    BeforeValidator(_parse_tlp),
    PlainSerializer(lambda tlp: tlp.label.lower(), return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "description": "TLP name (TLP 1.0 or 2.0; case-insensitive, 'TLP:' prefix allowed)",
            "enum": ["clear", "white", "green", "amber", "amber+strict", "red"],
        }
    ),
]


class PurposeCode(StrEnum):
    INCIDENT_RESPONSE = "incident-response"
    FRAUD_PREVENTION = "fraud-prevention"
    NETWORK_PROTECTION = "network-protection"
    ABUSE_HANDLING = "abuse-handling"
    LAW_ENFORCEMENT_INVESTIGATION = "law-enforcement-investigation"
    FINANCIAL_INTELLIGENCE = "financial-intelligence"
    SUPERVISION = "supervision"


class Attribution(StrEnum):
    """How the producer is shown to the subscriber (ranked: attributed is the most permissive)."""

    ATTRIBUTED = "attributed"
    PSEUDONYMOUS = "pseudonymous"
    ANONYMOUS = "anonymous"

    @property
    def rank(self) -> int:
        return _ATTRIBUTION_RANK[self]


_ATTRIBUTION_RANK = {
    Attribution.ANONYMOUS: 0,
    Attribution.PSEUDONYMOUS: 1,
    Attribution.ATTRIBUTED: 2,
}


class MatchMode(StrEnum):
    ANY = "any"
    ALL = "all"


class TagField(StrEnum):
    LABELS = "labels"
    INDICATOR_TYPES = "indicator_types"


def _to_utc_datetime(value: object) -> object:
    # YAML reads `2026-01-01` as a date: a bare date means midnight UTC, written down in the docs.
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str) and len(value) == 10:
        try:
            return _to_utc_datetime(date.fromisoformat(value))
        except ValueError:
            return value
    return value


AwareDatetime = Annotated[datetime, BeforeValidator(_to_utc_datetime)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Term(_Frozen):
    """When the agreement applies: valid_from inclusive, valid_until exclusive."""

    valid_from: AwareDatetime = Field(description="Start (inclusive); a bare date is 00:00 UTC")
    valid_until: AwareDatetime = Field(description="End (exclusive); a bare date is 00:00 UTC")

    @model_validator(mode="after")
    def _ordered_and_aware(self) -> Term:
        for name in ("valid_from", "valid_until"):
            if getattr(self, name).tzinfo is None:
                raise ValueError(
                    f"{name} has no timezone: write it as 2026-01-01T00:00:00Z or a bare date"
                )
        if self.valid_until <= self.valid_from:
            raise ValueError(
                f"valid_until {self.valid_until.isoformat()} is not after valid_from "
                f"{self.valid_from.isoformat()}: the term would be empty"
            )
        return self

    def state(self, now: datetime) -> int:
        """-1 before the term, 0 inside it, 1 after it."""
        if now < self.valid_from:
            return -1
        return 1 if now >= self.valid_until else 0


class Purpose(_Frozen):
    code: PurposeCode
    text: str = Field(min_length=1, max_length=2000, description="The purpose as signed")


class LabelMatch(_Frozen):
    """Which labels/indicator_types an object must carry (compared case-insensitively)."""

    mode: MatchMode = Field(description="any: at least one value present; all: every value")
    values: tuple[Annotated[str, Field(pattern=TAG_PATTERN)], ...] = Field(min_length=1)
    fields: tuple[TagField, ...] = Field(
        default=(TagField.LABELS, TagField.INDICATOR_TYPES),
        min_length=1,
        description="Object properties whose values are matched",
    )

    @field_validator("values")
    @classmethod
    def _unique_values(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        _reject_duplicates(values, "labels.values")
        return values


class Redaction(_Frozen):
    drop_custom_properties: tuple[Annotated[str, Field(pattern=DROP_PROPERTY_PATTERN)], ...] = (
        Field(
            default=(), description="Custom properties removed before delivery; 'x_*' removes all"
        )
    )
    pseudonymise: tuple[str, ...] = Field(
        default=(),
        description="Top-level properties whose string values are replaced by stable pseudonyms",
    )
    keep_contributor_text: bool = Field(
        default=False,
        description=(
            "Under pseudonymous or anonymous attribution, keep external_references and free "
            "text (description, …), which often name the contributor; default: dropped"
        ),
    )

    @field_validator("pseudonymise")
    @classmethod
    def _pseudonymisable(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        _reject_duplicates(names, "redaction.pseudonymise")
        for name in names:
            if name in NOT_PSEUDONYMISABLE:
                raise ValueError(
                    f"property {name!r} cannot be pseudonymised: it carries identity, versioning, "
                    "detection logic or markings (use attribution for creator references)"
                )
        return names

    @model_validator(mode="after")
    def _disjoint(self) -> Redaction:
        dropped = set(self.drop_custom_properties)
        drop_all = ALL_CUSTOM_PROPERTIES in dropped
        for name in self.pseudonymise:
            if name in dropped or (drop_all and name.startswith("x_")):
                raise ValueError(
                    f"property {name!r} is both dropped and pseudonymised: keep it in one list"
                )
        return self

    def drops(self, name: str) -> bool:
        return name.startswith("x_") and (
            ALL_CUSTOM_PROPERTIES in self.drop_custom_properties
            or name in self.drop_custom_properties
        )

    @property
    def is_empty(self) -> bool:
        return not self.drop_custom_properties and not self.pseudonymise


Party = Annotated[
    str,
    Field(
        pattern=PARTY_PATTERN,
        description="An org id (named one by one) or 'sector:<sector>' (every org of that sector)",
    ),
]
StixType = Annotated[str, Field(pattern=STIX_TYPE_PATTERN)]


# --- false-positive policy (docs/feedback.md, "Sightings and false-positive reports") ---------


class FalsePositiveAction(StrEnum):
    LOWER_CONFIDENCE = "lower_confidence"  # bus-minted indicators: confidence capped
    WITHHOLD = "withhold"  # not delivered; holders get a revocation


class FalsePositivePolicy(_Frozen):
    """What happens to a key's indicator for this agreement's subscribers once `threshold`
    distinct member orgs reported it as a false positive."""

    threshold: int = Field(ge=1, le=1000, description="Distinct reporting orgs that trigger it")
    action: FalsePositiveAction
    confidence: int = Field(
        default=15, ge=0, le=100, description="lower_confidence: the cap (STIX 'low' = 15)"
    )


class Agreement(_Frozen):
    id: str = Field(pattern=AGREEMENT_ID_PATTERN, description="Stable slug, unique in the set")
    version: int = Field(ge=1, description="Bumped on every edit; recorded on each decision")
    title: str = Field(default="", max_length=200)
    term: Term
    purpose: Purpose
    publishers: tuple[Party, ...] = Field(min_length=1)
    subscribers: tuple[Party, ...] = Field(min_length=1)
    tlp_ceiling: TLPName = Field(description="Highest TLP deliverable under this agreement")
    object_types: tuple[StixType, ...] = Field(
        min_length=1, description="STIX types allowed; ['*'] means any type"
    )
    observable_types: tuple[StixType, ...] = Field(
        min_length=1,
        description="Observable types allowed; ['*'] means any (including none). Otherwise the "
        "object must have observables and every one must be listed",
    )
    labels: LabelMatch | None = Field(default=None, description="Absent: no label requirement")
    min_confidence: int | None = Field(
        default=None, ge=0, le=100, description="Objects without confidence fail a minimum"
    )
    attribution: Attribution
    redaction: Redaction = Field(default_factory=Redaction)
    onward_sharing: bool = Field(
        description="May the subscriber share onward (within the TLP)? false adds a marking"
    )
    # --- false-positive guard and decay (docs/feedback.md) ---------------------------------
    warninglist_opt_out: tuple[Annotated[str, Field(pattern=WARNINGLIST_PATTERN)], ...] = Field(
        default=(),
        description="Warninglists whose hits this agreement still receives (e.g. for an "
        "investigation); '*' means every maintained list. Members' own domains and networks "
        "(member-<org>) cannot be opted out of",
    )
    max_age: timedelta | None = Field(
        default=None,
        description="Minted indicators expire for this agreement's subscribers this long after "
        "the bus accepted the producer's latest version (ISO 8601 duration, e.g. P30D); "
        "absent: only valid_until (or the bus default by observable type) applies",
    )

    @field_validator("warninglist_opt_out")
    @classmethod
    def _opt_outs(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        _reject_duplicates(values, "warninglist_opt_out")
        if ANY in values and len(values) > 1:
            raise ValueError("warninglist_opt_out: '*' already means every list; list nothing else")
        for value in values:
            if value.startswith(MEMBER_LIST_PREFIX):
                raise ValueError(
                    f"warninglist_opt_out: {value!r} is an org's own domains and networks, which "
                    "are never delivered to anyone; remove it"
                )
        return values

    @field_validator("max_age")
    @classmethod
    def _positive_age(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError(f"max_age {value} is not positive: write e.g. P30D or PT1H")
        return value
    false_positive: FalsePositivePolicy | None = Field(
        default=None, description="Absent: false-positive reports change nothing for delivery"
    )

    @field_validator("publishers", "subscribers", "object_types", "observable_types")
    @classmethod
    def _no_duplicates(cls, values: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        field_name = info.field_name or "list"
        _reject_duplicates(values, field_name)
        if ANY in values and len(values) > 1:
            raise ValueError(f"{field_name}: '*' already means any; list nothing else")
        return values

    @property
    def named_publishers(self) -> frozenset[str]:
        return frozenset(p for p in self.publishers if not p.startswith(SECTOR_PREFIX))

    @property
    def publisher_sectors(self) -> frozenset[Sector]:
        return _sectors(self.publishers)

    @property
    def named_subscribers(self) -> frozenset[str]:
        return frozenset(s for s in self.subscribers if not s.startswith(SECTOR_PREFIX))

    @property
    def subscriber_sectors(self) -> frozenset[Sector]:
        return _sectors(self.subscribers)

    @property
    def any_object_type(self) -> bool:
        return self.object_types == (ANY,)

    @property
    def any_observable_type(self) -> bool:
        return self.observable_types == (ANY,)

    @property
    def rewrites_content(self) -> bool:
        """Whether delivery changes the producer's content (and so needs a new object id)."""
        return (
            self.attribution is not Attribution.ATTRIBUTED
            or not self.redaction.is_empty
            or not self.onward_sharing
        )


def _sectors(parties: tuple[str, ...]) -> frozenset[Sector]:
    return frozenset(
        Sector(p.removeprefix(SECTOR_PREFIX)) for p in parties if p.startswith(SECTOR_PREFIX)
    )


def _reject_duplicates(values: tuple[str, ...], field: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{field} lists {value!r} twice: list each value once")
        seen.add(value)


class AgreementSet(_Frozen):
    """Every agreement in force or on file; ids are unique within a set."""

    agreements: tuple[Agreement, ...] = Field(default=())

    @model_validator(mode="after")
    def _unique_ids(self) -> AgreementSet:
        _reject_duplicates(tuple(a.id for a in self.agreements), "agreement ids")
        return self

    def __iter__(self) -> Any:  # iterate agreements directly: `for a in agreement_set`
        return iter(self.agreements)

    def __len__(self) -> int:
        return len(self.agreements)

    def get(self, agreement_id: str) -> Agreement:
        for agreement in self.agreements:
            if agreement.id == agreement_id:
                return agreement
        known = ", ".join(a.id for a in self.agreements)
        raise NotFound(f"unknown agreement {agreement_id!r}", f"use one the set has: {known}")


def _describe_location(data: object, loc: tuple[int | str, ...]) -> str:
    """'agreements[2] (id cert-to-isps).tlp_ceiling' from a pydantic error location."""
    parts: list[str] = []
    node: object = data
    for step in loc:
        if isinstance(step, int):
            label = f"[{step}]"
            if isinstance(node, list) and step < len(node):
                node = node[step]
                if isinstance(node, dict) and isinstance(node.get("id"), str):
                    label += f" (id {node['id']})"
            else:
                node = None
            parts.append(label)
        else:
            node = node.get(step) if isinstance(node, dict) else None
            parts.append(f".{step}" if parts else step)
    return "".join(parts) or "(top level)"


def parse_agreements(data: object, source: str) -> AgreementSet:
    """Validate already-parsed YAML/JSON; errors name the source and each broken field."""
    if isinstance(data, list):
        data = {"agreements": data}
    try:
        return AgreementSet.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"  {_describe_location(data, tuple(err['loc']))}: {err['msg']}" for err in exc.errors()
        ]
        raise ConfigError(
            f"agreements in {source} are invalid ({len(lines)} problem(s)):\n" + "\n".join(lines),
            "fix these fields (see docs/agreements.md)",
        ) from None


def agreements_from_yaml(text: str, source: str = "<text>") -> AgreementSet:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"agreements in {source} are not valid YAML: {exc}",
            "fix the YAML syntax at the place shown",
        ) from exc
    return parse_agreements(data if data is not None else {}, source)


def load_agreements(path: str | Path) -> AgreementSet:
    """Read and validate an agreements YAML file; errors name the file and the broken field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read agreements file {path}: {exc.strerror}",
            "check the path (relative paths are read from the current directory)",
        ) from exc
    return agreements_from_yaml(text, str(path))


SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "agreement.schema.json"


def agreement_json_schema() -> dict[str, Any]:
    schema = AgreementSet.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "stixbus sharing agreements"
    return schema


def render_json_schema() -> str:
    return json.dumps(agreement_json_schema(), indent=2, sort_keys=True) + "\n"


def write_json_schema(path: Path = SCHEMA_PATH) -> Path:
    path.write_text(render_json_schema(), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(f"wrote {write_json_schema()}")
