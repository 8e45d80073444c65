"""Records of the feedback stages (docs/feedback.md, "Sightings and false-positive reports").

`<p>.feedback` (key = the delivered STIX id) carries `FeedbackEvent`s: what the audit says was
delivered to whom (`DeliveryFact`s, batched per partition: `deliveries`) and what a subscriber
reported about it (`FeedbackReport`).
`<p>.feedback-sources` (key = the dedup key) carries `FeedbackEvent`s with a `Contribution`
(one accepted report, mapped to one producer's object) or a flush (coalescing window over).
`<p>.false-positives` (compacted, key = the dedup key) carries `FalsePositiveCount`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from schemas.agreement import Attribution
from schemas.audit import AuditSource


class ReportKind(StrEnum):
    SIGHTING = "sighting"  # a STIX sighting of a received id
    FALSE_POSITIVE = "false_positive"  # an opinion disagree / strongly-disagree on it
    NOT_FALSE_POSITIVE = "not_false_positive"  # a later opinion version with another value


class DeliveryFact(BaseModel):
    """`subscriber` received `delivered_id`, built from `sources`, under `agreement_id`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    delivered_id: str
    subscriber: str
    agreement_id: str | None = None
    attribution: Attribution | None = None
    dedup_key: str
    sources: list[AuditSource] = Field(default_factory=list)
    decided_at: datetime


class FeedbackReport(BaseModel):
    """One sighting or opinion of a subscriber about one id it names (`target_id`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    submission_id: str
    reporter: str = Field(description="Org id bound by the ingest topic, never by the payload")
    received_at: datetime
    report_id: str = Field(description="The sighting's or opinion's STIX id")
    modified: str
    kind: ReportKind
    target_id: str
    pointer: str = Field(description="RFC 6901 pointer to the reference, for the receipt")
    count: int = Field(default=1, ge=0)
    first_seen: str | None = None
    last_seen: str | None = None


class Contribution(BaseModel):
    """An accepted report mapped to one producer's object behind the delivered id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dedup_key: str
    source: AuditSource
    reporter: str
    attribution: Attribution | None = None
    agreement_id: str | None = None
    report: FeedbackReport


class FeedbackEvent(BaseModel):
    """Exactly one of the fields is set (a flush carries only `flush`).

    `deliveries`: the index's batched form, facts about several delivered ids that all map to
    the record's partition (`stixbus.core.feedback.batch_deliveries`); its key is the first
    fact's id.  `delivery`: the older one-fact form, still read (a topic may hold such records
    from before an upgrade)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    delivery: DeliveryFact | None = None
    deliveries: list[DeliveryFact] = Field(default_factory=list)
    report: FeedbackReport | None = None
    contribution: Contribution | None = None
    flush: bool = False


class FalsePositiveCount(BaseModel):
    """Distinct member orgs currently reporting the key's indicator as a false positive."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dedup_key: str
    reporters: int = Field(ge=0)
