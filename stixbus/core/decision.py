"""The vocabulary of a routing decision: reason codes, transformations and the `Decision` itself.

Pure data, shared by `stixbus.core.decide` (which makes decisions), routing, minting, redaction,
the false-positive policy, the audit record and "explain".  `schemas/audit.py` keeps the codes
as strings (schemas sit below core).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from schemas.agreement import Attribution


class ReasonCode(StrEnum):
    ALLOWED = "allowed"
    UNKNOWN_ORG = "unknown_org"
    PUBLISHER_MISMATCH = "publisher_mismatch"
    SELF_DELIVERY = "self_delivery"
    PUBLISHER_ROLE_MISSING = "publisher_role_missing"
    SUBSCRIBER_ROLE_MISSING = "subscriber_role_missing"
    UNKNOWN_MARKING = "unknown_marking"
    NO_MATCHING_AGREEMENT = "no_matching_agreement"
    PUBLISHER_NOT_PARTY = "publisher_not_party"
    SUBSCRIBER_NOT_PARTY = "subscriber_not_party"
    AGREEMENT_NOT_YET_VALID = "agreement_not_yet_valid"
    AGREEMENT_EXPIRED = "agreement_expired"
    TLP_ABOVE_CEILING = "tlp_above_ceiling"
    RED_REQUIRES_NAMED_RECIPIENT = "red_requires_named_recipient"
    AMBER_STRICT_NOT_NAMED = "amber_strict_not_named"
    OBJECT_TYPE_NOT_ALLOWED = "object_type_not_allowed"
    OBSERVABLE_TYPE_NOT_ALLOWED = "observable_type_not_allowed"
    LABELS_NOT_MATCHED = "labels_not_matched"
    CONFIDENCE_MISSING = "confidence_missing"
    CONFIDENCE_BELOW_MINIMUM = "confidence_below_minimum"
    WARNINGLIST = "warninglist"  # written warninglist:<list> (Reason.code_text)
    FALSE_POSITIVE = "false_positive"  # withheld by the agreement's false-positive policy


class TransformKind(StrEnum):
    CREATOR_TO_PSEUDONYM = "creator_to_pseudonym"
    CREATOR_TO_BUS = "creator_to_bus"
    DROP_CUSTOM_PROPERTIES = "drop_custom_properties"
    PSEUDONYMISE_PROPERTIES = "pseudonymise_properties"
    MARK_NO_ONWARD_SHARING = "mark_no_onward_sharing"
    NEW_OBJECT_ID = "new_object_id"
    LOWER_CONFIDENCE = "lower_confidence"  # the agreement's false-positive policy


@dataclass(frozen=True, slots=True)
class Reason:
    code: ReasonCode
    message: str
    agreement_id: str | None = None
    detail: str | None = None  # the warninglist of a WARNINGLIST reason

    @property
    def code_text(self) -> str:
        """The code as audit records, metrics and explain show it: `warninglist:<list>`."""
        return self.code.value if self.detail is None else f"{self.code.value}:{self.detail}"

    def as_record(self) -> dict[str, Any]:
        return {"code": self.code_text, "message": self.message, "agreement_id": self.agreement_id}


@dataclass(frozen=True, slots=True)
class Transformation:
    kind: TransformKind
    detail: str

    def as_record(self) -> dict[str, str]:
        return {"kind": self.kind.value, "detail": self.detail}


class Decision(NamedTuple):
    """Immutable; a NamedTuple because routing builds millions of them (3x cheaper to make)."""

    allow: bool
    publisher: str
    subscriber: str
    object_id: str
    reasons: tuple[Reason, ...]
    agreement_id: str | None = None
    agreement_version: int | None = None
    attribution: Attribution | None = None
    onward_sharing: bool = False
    transformations: tuple[Transformation, ...] = ()
    also_allowed_by: tuple[str, ...] = ()

    @property
    def reason_codes(self) -> tuple[ReasonCode, ...]:
        return tuple(r.code for r in self.reasons)

    def as_record(self) -> dict[str, Any]:
        """JSON-ready form for the audit topic and the explain command."""
        return {
            "allow": self.allow,
            "publisher": self.publisher,
            "subscriber": self.subscriber,
            "object_id": self.object_id,
            "agreement_id": self.agreement_id,
            "agreement_version": self.agreement_version,
            "attribution": self.attribution.value if self.attribution else None,
            "onward_sharing": self.onward_sharing,
            "reasons": [r.as_record() for r in self.reasons],
            "transformations": [t.as_record() for t in self.transformations],
            "also_allowed_by": list(self.also_allowed_by),
        }


# Reasons whose message names the object: such decisions are not shared between objects.
_NAMES_THE_OBJECT = frozenset(
    {ReasonCode.UNKNOWN_ORG, ReasonCode.PUBLISHER_MISMATCH, ReasonCode.UNKNOWN_MARKING}
)


def shareable(decision: Decision) -> bool:
    """Whether the decision may stand for another object with the same profile (relabelled
    with its id): not when a reason's message names the object."""
    return not any(r.code in _NAMES_THE_OBJECT for r in decision.reasons)
