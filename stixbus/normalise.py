"""Normalise one ingest submission (pure): parse, validate, bind identity, canonicalise.

PLACEHOLDER from the foundation issue: accepts any JSON STIX object/bundle with an id and type.
The normalise issue replaces it with the strict, canonicalising fast path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import orjson

from schemas.envelope import DeadLetter, NormalizedObject, Reason, Receipt, Rejection
from schemas.org import Org, Registry
from schemas.tlp import tlp_of_marking
from stixbus.settings import Limits


@dataclass(frozen=True)
class NormaliseOutcome:
    accepted: list[NormalizedObject]
    receipt: Receipt
    dead_letter: DeadLetter | None = None
    rejections: list[Rejection] = field(default_factory=list)


def normalise_submission(
    raw: bytes,
    publisher: Org,
    registry: Registry,
    limits: Limits,
    *,
    submission_id: str,
    received_at: datetime,
    published_at: datetime,
) -> NormaliseOutcome:
    rejections: list[Rejection] = []
    accepted: list[NormalizedObject] = []
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        rejections.append(Rejection(reason=Reason.INVALID_JSON, message=f"not JSON: {exc}"))
        doc = None
    objects = doc.get("objects", []) if isinstance(doc, dict) and doc.get("type") == "bundle" else [doc]
    for index, obj in enumerate(o for o in objects if o is not None):
        if not isinstance(obj, dict) or "id" not in obj or "type" not in obj:
            rejections.append(
                Rejection(reason=Reason.NOT_STIX, pointer=f"/objects/{index}", message="no id/type")
            )
            continue
        obj = dict(obj)
        obj.setdefault("created_by_ref", publisher.identity_id)
        marks = [tlp_of_marking(m) for m in obj.get("object_marking_refs", [])]
        tlp = max((m for m in marks if m is not None), default=publisher.default_tlp)
        accepted.append(
            NormalizedObject(
                submission_id=submission_id,
                publisher=publisher.id,
                received_at=received_at,
                published_at=published_at,
                object_id=obj["id"],
                object_type=obj["type"],
                modified=obj.get("modified"),
                tlp=tlp,
                tlp_inherited=not marks,
                object=obj,
            )
        )
    receipt = Receipt(
        submission_id=submission_id,
        publisher=publisher.id,
        received_at=received_at,
        accepted=len(accepted),
        rejected=len(rejections),
        accepted_ids=[a.object_id for a in accepted],
        rejections=rejections,
    )
    dead = None
    if rejections:
        dead = DeadLetter(
            submission_id=submission_id,
            publisher=publisher.id,
            received_at=received_at,
            reasons=rejections,
            payload=raw.decode("utf-8", "replace"),
        )
    return NormaliseOutcome(accepted=accepted, receipt=receipt, dead_letter=dead, rejections=rejections)
