"""Audit records of one plan (pure): one `schemas.audit.AuditRecord` per routing decision."""

from __future__ import annotations

from datetime import datetime

from schemas.audit import AuditReason, AuditRecord, AuditTransformation
from stixbus.core.deliveries import Plan


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
