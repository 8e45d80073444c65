"""What each subscriber gets for one key (pure): agreement decisions, views, revocations.

Indicators with a canonical pattern are delivered as ONE bus-minted indicator per subscriber and
key (stixbus/core/minting.py), built from the sources that subscriber may see.  Other objects are
forwarded as the producer made them, redacted per agreement.  A new version goes out only on a
material change; see docs/dedup.md.  Agreement decisions come from stixbus/core/routing.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.agreement import Agreement, FalsePositiveAction
from schemas.org import Org, Registry
from stixbus.core.decay import DecayPolicy
from stixbus.core.decide import AgreementIndex
from stixbus.core.decision import Decision
from stixbus.core.dedup import KeyState, SubscriberView, with_views
from stixbus.core.fp_policy import capped_body, policy_decision, triggered_policy
from stixbus.core.guard import WarninglistIndex
from stixbus.core.ids import Uuid5Prefix, parse_time
from stixbus.core.minting import (
    Minted,
    Summary,
    build_minted,
    material_change,
    minted_indicator,
    next_modified,
    vouching_ended,
)
from stixbus.core.redact import (
    apply_transformations,
    companion_objects,
)
from stixbus.core.routing import Group, Row, agreements_by_id, routing_for


@dataclass(slots=True)
class Delivery:
    subscriber: str
    stix_object: dict[str, Any]
    companions: list[dict[str, Any]]
    agreement_id: str | None
    revocation: bool
    published_at: datetime | None
    decay: str | None = None  # why a revocation was sent on expiry: valid_until or max_age


@dataclass(frozen=True)
class Plan:
    state: KeyState
    deliveries: list[Delivery] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)


@dataclass(frozen=True)
class RouteConfig:
    confidence_step: int = 10
    guard: WarninglistIndex | None = None  # the false-positive guard (core/guard.py)
    decay: DecayPolicy | None = None  # default valid_until by observable type (core/decay.py)
    # dedup key -> distinct false-positive reporters (the worker's replay of the
    # false-positives topic; stixbus/core/fp_policy.py)
    false_positives: Mapping[str, int] = field(default_factory=dict)


def plan_key(
    state: KeyState,
    changed_source: str | None,
    registry: Registry,
    index: AgreementIndex,
    now: datetime,
    config: RouteConfig = RouteConfig(),
) -> Plan:
    """Decide, for every subscriber, whether this key's state warrants a new delivery.

    `changed_source` is the source whose new version triggered the call (its decisions are the
    ones audited); None for a timer tick (expiry).
    """
    deliveries: list[Delivery] = []
    audited: list[Decision] = []
    views = dict(state.views)
    sources = state.sources
    minted = state.minted
    active = {sid: src.active(now) for sid, src in sources.items()}
    # Only sources that still vouch shape a minted indicator.
    candidates = [(sid, src.record) for sid, src in sources.items() if active[sid] or not minted]
    changed = sources[changed_source].record if changed_source is not None else None
    routing = routing_for(index, registry, minted, candidates, changed, now, config.guard)
    ids = Uuid5Prefix(registry.bus.namespace, f"{state.key}/", "indicator--")
    built: dict[int, Minted] = {}
    shaped: dict[int, Minted] = {}
    summaries: dict[tuple[str, ...], Summary] = {}
    reported = config.false_positives.get(state.key, 0) if minted else 0
    for row in routing.rows:
        subscriber = row.subscriber
        previous = views.get(subscriber.id)
        first = row.first
        if first is not None and changed is not None:
            if first.object_id != changed.object_id:
                # first._replace(object_id=...), at a fraction of its cost
                first = tuple.__new__(Decision, (*first[:3], changed.object_id, *first[4:]))
            audited.append(first)
            if not first.allow and (previous is None or changed_source not in previous.source_ids):
                # The new version is invisible to this subscriber and its copy does not rest on
                # that source: nothing it holds can change (expiry comes through ticks).
                continue
        if reported and row.group >= 0:
            held = _false_positive(
                row, routing.groups[row.group], first, previous, reported, index, now, registry,
                ids, audited,
            )  # fmt: skip
            if held is not None:
                delivery, view = held
                if view is not None:
                    views[subscriber.id] = view
                if delivery is not None:
                    deliveries.append(delivery)
                continue
        if minted:
            if previous is not None and previous.revoked:
                continue  # revoked is final
            if row.group < 0:
                delivery, view = _plan_unvouched(state, subscriber, previous, active, registry, ids)
            else:
                found = built.get(row.group)
                group = routing.groups[row.group]
                if found is None:
                    same = shaped.get(group.shape)
                    if same is None:
                        found = shaped[group.shape] = build_minted(
                            state, group, candidates, summaries, registry
                        )
                    else:  # the same body (one entry in the table) under other agreements
                        found = same._replace(
                            companions=group.companions,
                            agreement_id=group.agreement_id,
                            agreement_version=group.agreement_version,
                        )
                    built[row.group] = found
                lowered = None
                if reported:
                    found, lowered = _lowered(found, row, group.agreement_id, reported, index)
                if found.expired(now):  # past its agreement's max_age (core/decay.py)
                    delivery, view = _plan_aged_out(subscriber, found, previous, ids, registry)
                else:
                    delivery, view = _plan_minted(
                        subscriber, found, previous, registry, config, ids
                    )
                if lowered is not None and delivery is not None and changed is None:
                    audited.append(lowered)  # a re-plan (tick) lowered it: say why
        else:
            allowed = {candidates[pos][0]: decision for pos, decision in row.allowed}
            delivery, view = _plan_forward(
                state, subscriber, allowed, previous, registry, index, now
            )
        if view is not None:
            views[subscriber.id] = view
        if delivery is not None:
            deliveries.append(delivery)
    settled = _settled(state, views, active, now)
    return Plan(with_views(state, views, settled), deliveries, audited)


def _false_positive(
    row: Row,
    group: Group,
    first: Decision | None,
    previous: SubscriberView | None,
    reported: int,
    index: AgreementIndex,
    now: datetime,
    registry: Registry,
    ids: Uuid5Prefix,
    audited: list[Decision],
) -> tuple[Delivery | None, SubscriberView | None] | None:
    """The row under a triggered false-positive policy (fp_policy.py), audited: None when no
    policy applies or it only caps confidence (planned as usual, then `_lowered`)."""
    policy = triggered_policy(index, group.agreement_id, reported)
    if policy is None:
        return None
    base = first if first is not None and first.allow else row.allowed[0][1]
    decision = policy_decision(base, group.agreement_id, policy, reported)
    if first is not None and first.allow:
        audited[-1] = decision  # the changed source's decision, as the policy changes it
    if policy.action is not FalsePositiveAction.WITHHOLD:
        return None
    if previous is None or previous.revoked:
        return None, None  # never delivered, or taken back already
    if first is None or not first.allow:
        audited.append(decision)
    view = _view(previous, previous.source_ids, next_modified(previous, now), True)
    revoked = minted_indicator(view, ids(row.subscriber.id), registry.bus.identity_id)
    return _delivery(row.subscriber, revoked, [], previous.agreement_id, True, None), view


def _lowered(
    found: Minted, row: Row, agreement_id: str | None, reported: int, index: AgreementIndex
) -> tuple[Minted, Decision | None]:
    """The minted body with its confidence capped, and the decision saying so (policy)."""
    policy = triggered_policy(index, agreement_id, reported)
    if policy is None or policy.action is not FalsePositiveAction.LOWER_CONFIDENCE:
        return found, None
    decision = policy_decision(row.allowed[0][1], agreement_id, policy, reported)
    return found._replace(body=capped_body(found.body, policy.confidence)), decision


def _view(
    previous: SubscriberView, source_ids: tuple[str, ...], modified: str | None, revoked: bool
) -> SubscriberView:
    """`previous` with other sources, version timestamp or revocation (minted views)."""
    return SubscriberView(
        source_ids,
        previous.agreement_id,
        previous.agreement_version,
        previous.created,
        modified,
        revoked,
        previous.body,
    )


def _settled(
    state: KeyState, views: dict[str, SubscriberView], active: dict[str, bool], now: datetime
) -> datetime | None:
    if any(active.values()):
        return None
    if any(not v.revoked for v in views.values()):
        return None
    return state.settled_at or now


def _plan_unvouched(
    state: KeyState,
    subscriber: Org,
    previous: SubscriberView | None,
    active: dict[str, bool],
    registry: Registry,
    ids: Uuid5Prefix,
) -> tuple[Delivery | None, SubscriberView | None]:
    """No source this subscriber may see still vouches."""
    if previous is None:
        return None, None  # never deliver an indicator nobody still vouches for
    # Everyone it was built from is revoked or expired: tell the subscriber, whatever the
    # agreements say now (revocation reaches every subscriber that ever received it).
    if any(active.get(s, False) for s in previous.source_ids):
        return None, None
    stamp = vouching_ended(state, previous)
    view = _view(previous, previous.source_ids, next_modified(previous, stamp), True)
    revoked = minted_indicator(view, ids(subscriber.id), registry.bus.identity_id)
    delivery = _delivery(subscriber, revoked, [], previous.agreement_id, True, None)
    if not any(state.sources[s].revoked for s in previous.source_ids if s in state.sources):
        delivery.decay = "valid_until"  # expired, not revoked by its producer
    return delivery, view


def _plan_aged_out(
    subscriber: Org,
    minted: Minted,
    previous: SubscriberView | None,
    ids: Uuid5Prefix,
    registry: Registry,
) -> tuple[Delivery | None, SubscriberView | None]:
    """The body this subscriber would get has passed its agreement's max_age: revoke what it
    holds (stamped with that moment, so a replay re-mints the same version), send nothing new."""
    if previous is None:
        return None, None
    stamp = parse_time(str(minted.body["valid_until"]))
    view = _view(previous, previous.source_ids, next_modified(previous, stamp), True)
    revoked = minted_indicator(view, ids(subscriber.id), registry.bus.identity_id)
    delivery = _delivery(subscriber, revoked, [], previous.agreement_id, True, None)
    delivery.decay = "max_age"
    return delivery, view


def _plan_minted(
    subscriber: Org,
    minted: Minted,
    previous: SubscriberView | None,
    registry: Registry,
    config: RouteConfig,
    ids: Uuid5Prefix,
) -> tuple[Delivery | None, SubscriberView | None]:
    body, source_ids = minted.body, minted.source_ids
    if previous is not None:
        assert previous.body is not None
        if previous.body is body or not material_change(
            previous.body, body, registry, config.confidence_step
        ):
            if previous.source_ids == source_ids:
                return None, None
            # Nothing the subscriber must hear about, but remember which sources now back what
            # it holds (expiry checks them; a stale list would tick this key on every scan).
            return None, _view(previous, source_ids, previous.modified, False)
    # Version timestamps come from the inputs (Kafka time of the newest source record), never
    # from the wall clock: reprocessing after a crash re-mints the same (id, modified), which
    # the consumer's idempotent drop (stixbus.kafka.client.VersionFilter) then discards.
    stamp = minted.stamp
    if previous is not None:
        created = previous.created
        modified = next_modified(previous, stamp)
    else:
        created = modified = minted.created
    view = SubscriberView(
        source_ids, minted.agreement_id, minted.agreement_version, created, modified, False, body
    )
    obj = minted_indicator(view, ids(subscriber.id), registry.bus.identity_id)
    delivery = Delivery(subscriber.id, obj, minted.companions, minted.agreement_id, False, stamp)
    return delivery, view


def _plan_forward(
    state: KeyState,
    subscriber: Org,
    allowed: dict[str, Decision],
    previous: SubscriberView | None,
    registry: Registry,
    index: AgreementIndex,
    now: datetime,
) -> tuple[Delivery | None, SubscriberView | None]:
    """Objects without a canonical pattern: the producer's object, redacted per agreement."""
    (source_id, source), *_ = state.sources.items()
    if previous is not None:
        if previous.revoked:
            return None, None
        assert previous.delivered is not None
        if previous.delivered.get("modified") == source.record.object.get("modified"):
            return None, None  # that version was delivered already
        if source.revoked and source_id not in allowed:
            # Revocation reaches whoever received the object, even after an agreement change.
            revoked = {**previous.delivered, "revoked": True, "modified": source.record.modified}
            view = SubscriberView.forwarded(
                revoked, previous.source_ids, previous.agreement_id, previous.agreement_version
            )
            return _delivery(subscriber, revoked, [], previous.agreement_id, True, None), view
    decision = allowed.get(source_id)
    if decision is None:
        return None, None
    if previous is None and source.revoked:
        return None, None
    agreement = _agreement_of(decision, index)
    if agreement is None:
        return None, None
    delivered = apply_transformations(source.record.object, decision, agreement, registry)
    companions = companion_objects(decision, agreement, registry)
    view = SubscriberView.forwarded(
        delivered, (source_id,), decision.agreement_id, decision.agreement_version
    )
    return (
        _delivery(
            subscriber,
            delivered,
            companions,
            decision.agreement_id,
            source.revoked,
            source.record.published_at,
        ),
        view,
    )


def _agreement_of(decision: Decision, index: AgreementIndex) -> Agreement | None:
    return agreements_by_id(index).get(decision.agreement_id or "")


def _delivery(
    subscriber: Org,
    stix_object: dict[str, Any],
    companions: list[dict[str, Any]],
    agreement_id: str | None,
    revocation: bool,
    published_at: datetime | None,
) -> Delivery:
    return Delivery(subscriber.id, stix_object, companions, agreement_id, revocation, published_at)
