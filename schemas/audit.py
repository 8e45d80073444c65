"""The audit trail on stixbus.audit: one `AuditEntry` per route step that decided or delivered.

An entry folds the step's decisions (`AuditRecord`, one per subscriber decision, allow and
deny) and its deliveries (`AuditDelivery`: who received which object, built from which sources
of which publishers).  Its `audit_id` is deterministic (a UUIDv5 over the key, the version
that triggered the step and what it delivered), so the replay of a step after a crash writes
the same id again and readers count it once (`stixbus audit verify`).

Written by the route stage (stixbus/core/audit.py builds them from a plan) and read by
`stixbus audit` / `stixbus audit verify`; this model is the contract, like the records in
schemas/envelope.py.  Reason codes and transformation kinds are the values of
`stixbus.core.decision.ReasonCode` / `TransformKind` (kept as strings here: schemas sit below the
core and must not import it).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas.agreement import Attribution


class AuditReason(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(description="A stixbus.core.decision.ReasonCode value, e.g. 'allowed'")
    message: str = Field(description="Why, in words, naming the rule")
    agreement_id: str | None = Field(default=None, description="The agreement the reason is about")


class AuditTransformation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = Field(description="A stixbus.core.decision.TransformKind value")
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


class AuditDelivery(BaseModel):
    """One delivery of a step: what `subscriber` received on deliver.<subscriber>."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subscriber: str
    object_id: str = Field(description="The delivered object's id (bus-minted or forwarded)")
    modified: str | None = Field(description="The delivered version (STIX modified)")
    revocation: bool = False
    agreement_id: str | None = None
    attribution: Attribution | None = Field(
        default=None, description="The agreement's attribution mode (how feedback may name it)"
    )
    sources: list[AuditSource] = Field(
        description="The producers' objects the delivered object rests on"
    )


class AuditEntry(BaseModel):
    """The audit of one route step (one key, one triggering version or expiry tick)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    audit_id: str = Field(description="Deterministic: a replayed step has the same id")
    key: str = Field(description="The dedup key (or STIX id for forwarded objects)")
    object_id: str | None = Field(description="The source version that triggered it; None: tick")
    publisher: str | None = None
    decided_at: datetime = Field(description="Wall-clock time of the routing step (UTC)")
    decisions: list[AuditRecord] = Field(default_factory=list)
    deliveries: list[AuditDelivery] = Field(default_factory=list)
