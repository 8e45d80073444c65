"""The audit record: one per routing decision (allow and deny), on stixbus.audit.

Written by the route stage (stixbus/core/audit.py builds them from the decisions of a plan) and
read by `stixbus agreements audit`; this model is the contract between the two, like the records
in schemas/envelope.py.  Reason codes and transformation kinds are the values of
`stixbus.core.decide.ReasonCode` / `TransformKind` (kept as strings here: schemas sit below the
core and must not import it).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas.agreement import Attribution


class AuditReason(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(description="A stixbus.core.decide.ReasonCode value, e.g. 'allowed'")
    message: str = Field(description="Why, in words, naming the rule")
    agreement_id: str | None = Field(default=None, description="The agreement the reason is about")


class AuditTransformation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = Field(description="A stixbus.core.decide.TransformKind value")
    detail: str


class AuditSource(BaseModel):
    """One producer's object behind a delivered object (the feedback stage's index)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    publisher: str
    object_id: str


class AuditRecord(BaseModel):
    """May `subscriber` receive `object_id` from `publisher`, under which agreement, and did it?"""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allow: bool
    publisher: str
    subscriber: str
    object_id: str
    agreement_id: str | None = Field(default=None, description="The agreement that allowed it")
    agreement_version: int | None = None
    attribution: Attribution | None = None
    onward_sharing: bool = False
    reasons: list[AuditReason] = Field(description="Every reason (an allow has one: allowed)")
    transformations: list[AuditTransformation] = Field(default_factory=list)
    also_allowed_by: list[str] = Field(
        default_factory=list, description="Other agreements that would also have allowed it"
    )
    decided_at: datetime = Field(description="Wall-clock time of the routing step (UTC)")
    delivered: bool = Field(description="The decision allowed and led to a delivery in this step")
    # What was delivered (delivered only): read by the feedback stage through
    # stixbus.core.audit.deliveries_of, never directly.
    delivered_id: str | None = Field(
        default=None, description="STIX id of the object the subscriber received (minted or not)"
    )
    dedup_key: str | None = Field(default=None, description="The key the delivery belongs to")
    delivered_sources: list[AuditSource] = Field(
        default_factory=list, description="The producers' objects behind the delivered object"
    )
