"""What each subscriber gets for one key (pure): agreement decisions, views, revocations.

Indicators with a canonical pattern are delivered as ONE bus-minted indicator per subscriber and
key (id = UUIDv5(bus namespace, key/subscriber), created_by_ref = the bus), built from the sources
that subscriber may see.  Other objects are forwarded as the producer made them, redacted per
agreement.  A new version goes out only on a material change; see docs/dedup.md.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.agreement import Agreement, Attribution
from schemas.org import Org, Registry
from schemas.tlp import TLP
from stixbus.decide import AgreementIndex, Decision
from stixbus.dedup import KeyState, SourceVersion, SubscriberView, parse_time
from stixbus.redact import (
    apply_transformations,
    bus_identity,
    companion_objects,
    no_onward_sharing_marking_id,
    pseudonym_identity_id,
)

STIX_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True)
class Delivery:
    subscriber: str
    stix_object: dict[str, Any]
    companions: list[dict[str, Any]]
    agreement_id: str | None
    revocation: bool
    published_at: datetime | None


@dataclass(frozen=True)
class Plan:
    state: KeyState
    deliveries: list[Delivery] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)


@dataclass(frozen=True)
class RouteConfig:
    confidence_step: int = 10


def stix_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def minted_id(registry: Registry, key: str, subscriber: str) -> str:
    return f"indicator--{uuid.uuid5(registry.bus.namespace, f'{key}/{subscriber}')}"


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
    for subscriber in registry.subscribers:
        previous = views.get(subscriber.id)
        first: Decision | None = None
        if changed_source is not None:
            changed = state.sources[changed_source].record
            first = index.decide(changed, registry.get(changed.publisher), subscriber, now)
            audited.append(first)
            if not first.allow and (previous is None or changed_source not in previous.source_ids):
                # The new version is invisible to this subscriber and its copy does not rest on
                # that source: nothing it holds can change (expiry comes through ticks).
                continue
        decisions: dict[str, Decision] = {}
        for sid, src in state.sources.items():
            if sid == changed_source and first is not None:
                decisions[sid] = first
            else:
                publisher = registry.get(src.record.publisher)
                decisions[sid] = index.decide(src.record, publisher, subscriber, now)
        allowed = {sid: d for sid, d in decisions.items() if d.allow}
        if state.minted:
            delivery, view = _plan_minted(
                state, subscriber, allowed, previous, registry, index, now, config
            )
        else:
            delivery, view = _plan_forward(
                state, subscriber, allowed, previous, registry, index, now
            )
        if view is not None:
            views[subscriber.id] = view
        if delivery is not None:
            deliveries.append(delivery)
    settled = _settled(state, views, now)
    new_state = state.model_copy(update={"views": views, "settled_at": settled})
    return Plan(new_state, deliveries, audited)


def _settled(state: KeyState, views: dict[str, SubscriberView], now: datetime) -> datetime | None:
    if any(src.active(now) for src in state.sources.values()):
        return None
    if any(not v.revoked for v in views.values()):
        return None
    return state.settled_at or now


def _plan_minted(
    state: KeyState,
    subscriber: Org,
    allowed: dict[str, Decision],
    previous: SubscriberView | None,
    registry: Registry,
    index: AgreementIndex,
    now: datetime,
    config: RouteConfig,
) -> tuple[Delivery | None, SubscriberView | None]:
    if previous is not None and previous.revoked:
        return None, None  # revoked is final
    vouching = [sid for sid in allowed if state.sources[sid].active(now)]
    if not vouching:
        if previous is None:
            return None, None  # never deliver an indicator nobody still vouches for
        # Everyone it was built from is revoked or expired: tell the subscriber, whatever the
        # agreements say now (revocation reaches every subscriber that ever received it).
        still = [
            s for s in previous.source_ids if s in state.sources and state.sources[s].active(now)
        ]
        if still:
            return None, None
        stamp = _vouching_ended(state, previous)
        revoked = {
            **previous.delivered,
            "revoked": True,
            "modified": _next_modified(previous, stamp),
        }
        view = previous.model_copy(update={"delivered": revoked})
        return _delivery(subscriber, revoked, [], previous.agreement_id, True, None), view

    sources = [state.sources[sid] for sid in sorted(vouching)]
    decisions = [allowed[sid] for sid in sorted(vouching)]
    body = _minted_body(state, sources, decisions, registry)
    if previous is not None and not _material_change(previous, body, registry, config):
        if previous.source_ids == tuple(sorted(vouching)):
            return None, None
        # Nothing the subscriber must hear about, but remember which sources now back what it
        # holds (expiry checks them; a stale list would tick this key on every scan).
        return None, previous.model_copy(update={"source_ids": tuple(sorted(vouching))})
    # Version timestamps come from the inputs (Kafka time of the newest source record), never
    # from the wall clock: reprocessing after a crash re-mints the same (id, modified), which
    # the consumer's idempotent drop (stixbus.client.VersionFilter) then discards.
    stamp = max(s.record.published_at for s in sources)
    created = previous.delivered["created"] if previous else stix_time(stamp)
    modified = _next_modified(previous, stamp) if previous else created
    minted = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": minted_id(registry, state.key, subscriber.id),
        "created": created,
        "modified": modified,
        "created_by_ref": registry.bus.identity_id,
        **body,
    }
    chosen = max(decisions, key=lambda d: (d.onward_sharing, d.agreement_id or ""))
    companions = [bus_identity(registry)]
    for decision in decisions:
        agreement = _agreement_of(decision, index)
        if agreement is not None:
            new = companion_objects(decision, agreement, registry)
            companions += [c for c in new if c not in companions]
    view = SubscriberView(
        delivered=minted,
        source_ids=tuple(sorted(vouching)),
        agreement_id=chosen.agreement_id,
        agreement_version=chosen.agreement_version,
    )
    latest = max(s.record.published_at for s in sources)
    return _delivery(subscriber, minted, companions, chosen.agreement_id, False, latest), view


def _minted_body(
    state: KeyState, sources: list[SourceVersion], decisions: list[Decision], registry: Registry
) -> dict[str, Any]:
    objects = [s.record.object for s in sources]
    tlp = max(s.record.tlp for s in sources)
    valid_from = min((str(o["valid_from"]) for o in objects if "valid_from" in o), key=parse_time)
    untils = [o.get("valid_until") for o in objects]
    confidences = [o["confidence"] for o in objects if isinstance(o.get("confidence"), int)]
    markings = [TLP(tlp).marking_id]
    for decision in decisions:
        if not decision.onward_sharing:
            marking = no_onward_sharing_marking_id(registry)
            if marking not in markings:
                markings.append(marking)
    body: dict[str, Any] = {
        "name": next((str(o["name"]) for o in objects if o.get("name")), "stixbus indicator"),
        "pattern": state.canonical_pattern,
        "pattern_type": "stix",
        "valid_from": valid_from,
        "object_marking_refs": markings,
        "x_stixbus_sources": [
            _source_ref(src, decision, registry)
            for src, decision in zip(sources, decisions, strict=True)
        ],
    }
    if all(isinstance(u, str) for u in untils):
        body["valid_until"] = max((str(u) for u in untils), key=parse_time)
    if confidences:
        body["confidence"] = max(confidences)
    types = sorted({t for o in objects for t in o.get("indicator_types", []) if isinstance(t, str)})
    labels = sorted({t for o in objects for t in o.get("labels", []) if isinstance(t, str)})
    if types:
        body["indicator_types"] = types
    if labels:
        body["labels"] = labels
    return body


def _source_ref(src: SourceVersion, decision: Decision, registry: Registry) -> dict[str, str]:
    """How the subscriber sees one source, per the agreement's attribution mode."""
    if decision.attribution is Attribution.ATTRIBUTED:
        return {
            "source_ref": src.record.object_id,
            "modified": str(src.record.modified),
            "created_by_ref": str(src.record.object.get("created_by_ref", "")),
        }
    if decision.attribution is Attribution.PSEUDONYMOUS and decision.agreement_id:
        return {
            "created_by_ref": pseudonym_identity_id(
                decision.agreement_id, decision.publisher, registry
            )
        }
    return {"created_by_ref": registry.bus.identity_id}


def _material_change(
    previous: SubscriberView, body: dict[str, Any], registry: Registry, config: RouteConfig
) -> bool:
    old = previous.delivered
    old_until, new_until = old.get("valid_until"), body.get("valid_until")
    if old_until is not None and (
        new_until is None or parse_time(str(new_until)) > parse_time(str(old_until))
    ):
        return True  # validity extended (or now open-ended)
    old_conf, new_conf = old.get("confidence"), body.get("confidence")
    if isinstance(old_conf, int) and isinstance(new_conf, int):
        if abs(new_conf - old_conf) >= config.confidence_step:
            return True
    elif old_conf != new_conf:
        return True
    if old.get("object_marking_refs") != body.get("object_marking_refs"):
        return True  # a stricter TLP now applies
    # A newly visible source matters only where attribution lets the subscriber see it (an
    # anonymous source shows as the bus identity, which the subscriber already has).  A new
    # version of a source it already sees, or a source dropping out, is not material.
    anonymous = registry.bus.identity_id
    return bool(_source_identities(body, anonymous) - _source_identities(old, anonymous))


def _source_identities(obj: dict[str, Any], anonymous: str) -> set[tuple[str, str]]:
    """The sources a subscriber can tell apart (an anonymous one is just the bus identity)."""
    refs = obj.get("x_stixbus_sources") or []
    identities = set()
    for ref in refs:
        if not isinstance(ref, dict):
            continue
        identity = (str(ref.get("source_ref", "")), str(ref.get("created_by_ref", "")))
        if identity != ("", anonymous):
            identities.add(identity)
    return identities


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
        if previous.delivered.get("modified") == source.record.object.get("modified"):
            return None, None  # that version was delivered already
        if source.revoked and source_id not in allowed:
            # Revocation reaches whoever received the object, even after an agreement change.
            revoked = {**previous.delivered, "revoked": True, "modified": source.record.modified}
            view = previous.model_copy(update={"delivered": revoked})
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
    view = SubscriberView(
        delivered=delivered,
        source_ids=(source_id,),
        agreement_id=decision.agreement_id,
        agreement_version=decision.agreement_version,
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
    return next((a for a in index.agreements if a.id == decision.agreement_id), None)


def _vouching_ended(state: KeyState, previous: SubscriberView) -> datetime:
    """When the last source behind `previous` stopped vouching: its revocation's Kafka time or
    its valid_until.  Derived from state only, so a replay re-mints the same version."""
    ends: list[datetime] = []
    for sid in previous.source_ids:
        src = state.sources.get(sid)
        if src is None:
            continue
        if src.revoked:
            ends.append(src.record.published_at)
        elif src.valid_until is not None:
            ends.append(parse_time(src.valid_until))
    return max(ends) if ends else parse_time(str(previous.delivered["modified"]))


def _next_modified(previous: SubscriberView | None, now: datetime) -> str:
    """A version timestamp strictly after the last one delivered (inputs can be out of order).

    STIX timestamps here carry milliseconds, so compare at that precision."""
    candidate = now.astimezone(UTC).replace(microsecond=now.microsecond // 1000 * 1000)
    if previous is not None:
        last = parse_time(str(previous.delivered["modified"]))
        if candidate <= last:
            candidate = last + timedelta(milliseconds=1)
    return stix_time(candidate)


def _delivery(
    subscriber: Org,
    stix_object: dict[str, Any],
    companions: list[dict[str, Any]],
    agreement_id: str | None,
    revocation: bool,
    published_at: datetime | None,
) -> Delivery:
    return Delivery(subscriber.id, stix_object, companions, agreement_id, revocation, published_at)
