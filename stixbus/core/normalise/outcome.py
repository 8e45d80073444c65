"""What a submission yields (pure): accepted records, the receipt, the dead letter.

`Accepted` / `Rejected` are the per-object results the checks produce; `build_outcome` turns
them into the receipt and dead letter the publisher gets back (docs/normalise.md)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from schemas.envelope import DeadLetter, NormalizedObject, Reason, Receipt, Rejection
from schemas.org import Org, Registry
from schemas.tlp import TLP


@dataclass(frozen=True)
class NormaliseOutcome:
    accepted: list[NormalizedObject]
    receipt: Receipt
    dead_letter: DeadLetter | None = None
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def defined_markings(self) -> list[str]:
        """Ids of the marking-definitions this submission had accepted (for the memory)."""
        return [r.object_id for r in self.accepted if r.object_type == "marking-definition"]


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
    # The official pattern grammar and the OASIS validator raise *Deferred instead of running
    # (normalise_submission(defer_heavy=True): the caller runs them off its event loop).
    defer_heavy: bool = False


# --- one object --------------------------------------------------------------------------------
@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is measurably slower
class Accepted:
    object: dict[str, Any]
    tlp: TLP
    tlp_inherited: bool
    canonical_pattern: str | None = None
    dedup_key: str | None = None
    observable_types: tuple[str, ...] = ()
    canonical_sco_id: str | None = None
    warnings: tuple[str, ...] = ()


class Rejected(Exception):
    """Internal control flow: the object broke a rule; carries the rejections to report."""

    def __init__(self, rejections: list[Rejection]) -> None:
        super().__init__(rejections[0].message)
        self.rejections = rejections


def reject(obj_id: Any, reason: Reason, pointer: str, message: str) -> Rejected:
    object_id = obj_id if isinstance(obj_id, str) else None
    return Rejected(
        [Rejection(object_id=object_id, reason=reason, pointer=pointer, message=message)]
    )


# --- output records ----------------------------------------------------------------------------
_NORMALIZED_FIELDS = set(NormalizedObject.model_fields)
_set_attribute = object.__setattr__


def normalized_object(accepted: Accepted, submission: Submission) -> NormalizedObject:
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


def reject_whole(
    raw: bytes, submission: Submission, reason: Reason, pointer: str, message: str
) -> NormaliseOutcome:
    rejection = Rejection(reason=reason, pointer=pointer, message=message)
    return build_outcome(raw, submission, [], [rejection], rejected_count=1, warnings=[])


def build_outcome(
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
