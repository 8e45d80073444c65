"""Audit records of one plan (pure): one `schemas.audit.AuditRecord` per routing decision, and
the one reader of what a record says was delivered (`deliveries_of`, for the feedback stage)."""

from __future__ import annotations

from datetime import datetime

from schemas.audit import AuditReason, AuditRecord, AuditSource, AuditTransformation
from schemas.feedback import DeliveryFact
from stixbus.core.deliveries import Plan


def audit_records(plan: Plan, now: datetime) -> list[AuditRecord]:
    """One audit record per decision (allow and deny), saying whether it led to a delivery and,
    if so, what was delivered (id and the producers' objects behind it)."""
    delivered = {d.subscriber: d for d in plan.deliveries}
    state = plan.state
    records = []
    for decision in plan.decisions:
        delivery = delivered.get(decision.subscriber) if decision.allow else None
        sent = delivery is not None
        if delivery is not None and delivery.revocation:
            delivery = None  # a revocation: nothing new to report feedback about
        sources: list[AuditSource] = []
        if delivery is not None:
            view = state.views.get(decision.subscriber)
            for sid in view.source_ids if view is not None else ():
                src = state.sources.get(sid)
                if src is not None:
                    sources.append(AuditSource(publisher=src.record.publisher, object_id=sid))
        records.append(
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
                delivered=sent,
                delivered_id=delivery.stix_object["id"] if delivery is not None else None,
                dedup_key=state.key if delivery is not None else None,
                delivered_sources=sources,
            )
        )
    return records


def deliveries_of(record: AuditRecord) -> list[DeliveryFact]:
    """What one audit record says a subscriber received (none for denials and records written
    before delivered ids were recorded).  The feedback stage reads audit records only through
    this function, so a change of the audit encoding (per-batch folding, say) stays here."""
    if not record.delivered or record.delivered_id is None or record.dedup_key is None:
        return []
    return [
        DeliveryFact(
            delivered_id=record.delivered_id,
            subscriber=record.subscriber,
            agreement_id=record.agreement_id,
            attribution=record.attribution,
            dedup_key=record.dedup_key,
            sources=list(record.delivered_sources),
            decided_at=record.decided_at,
        )
    ]
