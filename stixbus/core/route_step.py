"""One event of the route stage (pure): merge, plan, audit, and what to do with the table.

The route agent (agents/route.py) decodes an event — a normalized object or an expiry tick for a
key — reads the key's state, calls `route_step` and carries out the result: send the deliveries
and audit records, quarantine a version conflict, then write or delete the key's state.

Branches (docs/dedup.md):
- tick for a key without state: nothing;
- tick: re-plan the key (revocations of expired sources, settling, GC);
- a version conflict (same id and modified, other content): quarantine, state unchanged;
- a duplicate (identical re-submission, stale, after revocation): suppressed; an identical one
  refreshes the source's last_seen;
- a new source or version: plan the key, audit the decisions about that version.
After a plan the key is deleted when it has been settled for longer than the grace period.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from schemas.audit import AuditEntry, AuditRecord
from schemas.envelope import DeadLetter, NormalizedObject, Receipt
from schemas.org import Registry
from stixbus.core.audit import audit_entry, audit_records
from stixbus.core.decide import AgreementIndex
from stixbus.core.dedup import KeyState, MergeOutcome, conflict_outcome, merge_source
from stixbus.core.deliveries import Delivery, RouteConfig, plan_key
from stixbus.core.expiry import is_collectable, state_deadline


@dataclass(frozen=True, slots=True)
class Tick:
    """An expiry tick for the event's key (agents/expiry.py): re-plan without new input."""


class TableWrite(StrEnum):
    KEEP = "keep"  # leave the key's stored state as it is
    PUT = "put"  # store `state` (and index its `deadline`)
    DELETE = "delete"  # forget the key (and its deadline)


@dataclass(frozen=True, slots=True)
class Quarantine:
    """A version conflict: the publisher's receipt update and the dead letter."""

    receipt: Receipt
    dead_letter: DeadLetter


@dataclass(frozen=True, slots=True)
class StepResult:
    table: TableWrite
    state: KeyState | None = None  # the state to store (PUT)
    deadline: datetime | None = None  # when the key next needs a tick (PUT), grace included
    deliveries: list[Delivery] = field(default_factory=list)
    audit: list[AuditRecord] = field(default_factory=list)  # the decisions, one per subscriber
    audit_entry: AuditEntry | None = None  # what the agent writes: decisions + deliveries folded
    quarantine: Quarantine | None = None
    outcome: MergeOutcome | None = None  # None for ticks

    @property
    def suppressed(self) -> bool:
        """A duplicate that led to nothing (for the suppressed-records metric)."""
        return self.outcome is not None and self.outcome not in _ROUTED


_ROUTED = frozenset({MergeOutcome.NEW_SOURCE, MergeOutcome.NEW_VERSION, MergeOutcome.CONFLICT})
_NOTHING = StepResult(TableWrite.KEEP)


def route_step(
    event: NormalizedObject | Tick,
    state: KeyState | None,
    registry: Registry,
    index: AgreementIndex,
    now: datetime,
    config: RouteConfig,
    grace_seconds: float,
) -> StepResult:
    """What one event changes for its key: the new state and the records to write."""
    if isinstance(event, Tick):
        if state is None:
            return _NOTHING
        plan = plan_key(state, None, registry, index, now, config)
        outcome = None
    else:
        state, outcome = merge_source(state, event, now, config.decay)
        if outcome is MergeOutcome.CONFLICT:
            receipt, letter = conflict_outcome(event)
            return StepResult(
                TableWrite.KEEP, quarantine=Quarantine(receipt, letter), outcome=outcome
            )
        if outcome is not MergeOutcome.NEW_SOURCE and outcome is not MergeOutcome.NEW_VERSION:
            if outcome is MergeOutcome.IDENTICAL:  # keep last_seen
                deadline = state_deadline(state, grace_seconds)
                return StepResult(TableWrite.PUT, state, deadline, outcome=outcome)
            return StepResult(TableWrite.KEEP, outcome=outcome)
        plan = plan_key(state, event.object_id, registry, index, now, config)
    audit = audit_records(plan, now)
    trigger = None if isinstance(event, Tick) else event
    entry = audit_entry(plan, audit, trigger, registry.bus.namespace, now)
    if is_collectable(plan.state, now, grace_seconds):
        return StepResult(
            TableWrite.DELETE, None, None, plan.deliveries, audit, entry, outcome=outcome
        )
    deadline = state_deadline(plan.state, grace_seconds)
    return StepResult(
        TableWrite.PUT, plan.state, deadline, plan.deliveries, audit, entry, outcome=outcome
    )
