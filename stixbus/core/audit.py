"""The audit of one route step (pure): its decisions and deliveries, folded in one entry.

`audit_records` gives one `schemas.audit.AuditRecord` per routing decision; `audit_entry`
folds them with the step's deliveries into the one `AuditEntry` the route agent writes, under a
deterministic `audit_id`; `deliveries_of` is how readers (`stixbus audit verify`) learn who
received which object from which sources, and `delivery_facts` what the feedback stage indexes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from schemas.audit import (
    AuditDelivery,
    AuditEntry,
    AuditReason,
    AuditRecord,
    AuditSource,
    AuditTransformation,
)
from schemas.envelope import NormalizedObject
from schemas.feedback import DeliveryFact
from stixbus.core.deliveries import Plan
from stixbus.core.ids import uuid5


def audit_records(plan: Plan, now: datetime) -> list[AuditRecord]:
    """One audit record per decision (allow and deny), saying whether it led to a delivery."""
    delivered = {d.subscriber for d in plan.deliveries}
    return [
        AuditRecord(
            allow=decision.allow,
            publisher=decision.publisher,
            subscriber=decision.subscriber,
            object_id=decision.object_id,
            agreement_id=decision.agreement_id,
            agreement_version=decision.agreement_version,
            attribution=decision.attribution,
            onward_sharing=decision.onward_sharing,
            reasons=[
                AuditReason(code=r.code_text, message=r.message, agreement_id=r.agreement_id)
                for r in decision.reasons
            ],
            transformations=[
                AuditTransformation(kind=t.kind.value, detail=t.detail)
                for t in decision.transformations
            ],
            also_allowed_by=list(decision.also_allowed_by),
            decided_at=now,
            delivered=decision.allow and decision.subscriber in delivered,
        )
        for decision in plan.decisions
    ]


def audit_entry(
    plan: Plan,
    decisions: list[AuditRecord],
    trigger: NormalizedObject | None,
    namespace: uuid.UUID,
    now: datetime,
) -> AuditEntry | None:
    """The step's one audit entry (None when it neither decided nor delivered).

    `audit_id` = UUIDv5(bus namespace, key, triggering (id, modified) or "tick", and every
    delivered (subscriber, id, modified)): reprocessing the same event after a crash gives the
    same deliveries (versions come from the inputs, docs/dedup.md) and so the same id."""
    if not decisions and not plan.deliveries:
        return None
    state = plan.state
    attribution = {d.subscriber: d.attribution for d in decisions if d.allow}
    deliveries = []
    for d in plan.deliveries:
        view = state.views.get(d.subscriber)
        sources = [
            AuditSource(publisher=state.sources[sid].record.publisher, object_id=sid)
            for sid in (view.source_ids if view is not None else ())
            if sid in state.sources
        ]
        deliveries.append(
            AuditDelivery(
                subscriber=d.subscriber,
                object_id=d.stix_object["id"],
                modified=d.stix_object.get("modified"),
                revocation=d.revocation,
                agreement_id=d.agreement_id,
                attribution=attribution.get(d.subscriber),
                sources=sources,
            )
        )
    what = "tick" if trigger is None else f"{trigger.object_id}/{trigger.modified}"
    name = "|".join(
        [
            f"audit/{state.key}/{what}",
            *(f"{d.subscriber}/{d.object_id}/{d.modified}" for d in deliveries),
        ]
    )
    return AuditEntry(
        audit_id=uuid5(namespace, name),
        key=state.key,
        object_id=None if trigger is None else trigger.object_id,
        publisher=None if trigger is None else trigger.publisher,
        decided_at=now,
        decisions=decisions,
        deliveries=deliveries,
    )


def deliveries_of(entry: AuditEntry) -> list[AuditDelivery]:
    """Who received which object (and from which sources and publishers) in this entry."""
    return list(entry.deliveries)


def delivery_facts(entry: AuditEntry) -> list[DeliveryFact]:
    """What the feedback stage indexes from one entry: each subscriber that received a (non-
    revocation) object, its id and the producers' objects behind it."""
    return [
        DeliveryFact(
            delivered_id=d.object_id,
            subscriber=d.subscriber,
            agreement_id=d.agreement_id,
            attribution=d.attribution,
            dedup_key=entry.key,
            sources=list(d.sources),
            decided_at=entry.decided_at,
        )
        for d in entry.deliveries
        if not d.revocation
    ]


def decisions_of(entry: AuditEntry) -> list[AuditRecord]:
    """The entry's per-subscriber decisions (what `stixbus audit` prints, one per line)."""
    return list(entry.decisions)


# What `stixbus audit verify` compares: one delivered version at one subscriber.
Delivered = tuple[str, str, str | None]  # (subscriber, object id, modified)


@dataclass(frozen=True)
class AuditCheck:
    delivered: int  # distinct delivered versions checked
    missing: list[Delivered]  # delivered, no audit entry lists it
    duplicated: list[Delivered]  # listed by more than one distinct audit id
    audited_only: int  # listed by an audit entry, not (or not yet) on the deliver topic

    @property
    def complete(self) -> bool:
        return not self.missing and not self.duplicated


def check_audit(delivered: Iterable[Delivered], entries: Iterable[AuditEntry]) -> AuditCheck:
    """Every delivered version against the audit entries: exactly one audit id each.

    Entries with the same `audit_id` (a step replayed after a crash) count once; so do
    deliveries seen twice on the topic (the same replay, dropped by consumers)."""
    audited: dict[Delivered, set[str]] = {}
    for entry in entries:
        for d in deliveries_of(entry):
            audited.setdefault((d.subscriber, d.object_id, d.modified), set()).add(entry.audit_id)
    seen = set(delivered)
    missing = sorted(d for d in seen if d not in audited)
    duplicated = sorted(d for d in seen if len(audited.get(d, ())) > 1)
    return AuditCheck(len(seen), missing, duplicated, len(audited.keys() - seen))
