"""What each subscriber gets for one key (pure): agreement decisions, views, revocations.

Indicators with a canonical pattern are delivered as ONE bus-minted indicator per subscriber and
key (id = UUIDv5(bus namespace, key/subscriber), created_by_ref = the bus), built from the sources
that subscriber may see.  Other objects are forwarded as the producer made them, redacted per
agreement.  A new version goes out only on a material change; see docs/dedup.md.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

from schemas.agreement import Agreement, Attribution
from schemas.envelope import NormalizedObject
from schemas.org import Org, Registry
from schemas.tlp import TLP
from stixbus.core.decide import AgreementIndex, Decision, shareable
from stixbus.core.dedup import KeyState, SourceVersion, SubscriberView, with_views
from stixbus.core.ids import Uuid5Prefix, parse_time, stix_time, uuid5
from stixbus.core.redact import (
    apply_transformations,
    bus_identity,
    companion_objects,
    no_onward_sharing_marking_id,
    pseudonym_identity_id,
)


@dataclass(slots=True)
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


def minted_id(registry: Registry, key: str, subscriber: str) -> str:
    return f"indicator--{uuid5(registry.bus.namespace, f'{key}/{subscriber}')}"


def minted_object(
    view: SubscriberView, key: str, subscriber: str, registry: Registry
) -> dict[str, Any]:
    """The indicator a minted view stands for, exactly as it was delivered."""
    return _object(view, minted_id(registry, key, subscriber), registry.bus.identity_id)


def _object(view: SubscriberView, object_id: str, creator: str) -> dict[str, Any]:
    assert view.body is not None
    obj = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": object_id,
        "created": view.created,
        "modified": view.modified,
        "created_by_ref": creator,
        **view.body,
    }
    if view.revoked:
        obj["revoked"] = True
    return obj


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
    routing = _routing(index, registry, minted, candidates, changed, now)
    ids = Uuid5Prefix(registry.bus.namespace, f"{state.key}/", "indicator--")
    built: dict[int, _Minted] = {}
    shaped: dict[int, _Minted] = {}
    summaries: dict[tuple[str, ...], _Summary] = {}
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
        if minted:
            if previous is not None and previous.revoked:
                continue  # revoked is final
            if row.group < 0:
                delivery, view = _plan_unvouched(state, subscriber, previous, active, registry, ids)
            else:
                found = built.get(row.group)
                if found is None:
                    group = routing.groups[row.group]
                    same = shaped.get(group.shape)
                    if same is None:
                        found = shaped[group.shape] = _build(
                            state, group, candidates, summaries, registry
                        )
                    else:  # the same body (one entry in the table) under other agreements
                        found = same._replace(
                            companions=group.companions,
                            agreement_id=group.agreement_id,
                            agreement_version=group.agreement_version,
                        )
                    built[row.group] = found
                delivery, view = _plan_minted(subscriber, found, previous, registry, config, ids)
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


# --- routing: agreement decisions for all subscribers, cached per source profiles -----------


class _Group(NamedTuple):
    """Subscribers that see the same sources under the same agreement terms share one body."""

    shape: int  # groups of equal shape (sources, attribution, markings) mint equal bodies
    positions: tuple[int, ...]  # candidate sources allowed
    decisions: tuple[Decision, ...]
    extra_markings: list[str]  # the no-onward-sharing marking when an agreement forbids it
    agreement_id: str | None
    agreement_version: int | None
    companions: list[dict[str, Any]]


class _Row(NamedTuple):
    subscriber: Org
    first: Decision | None  # for the changed source (audited)
    allowed: tuple[tuple[int, Decision], ...]  # candidate positions allowed, with decisions
    group: int  # minted: index into _Routing.groups; -1: nothing allowed


class _Routing(NamedTuple):
    rows: tuple[_Row, ...]
    groups: tuple[_Group, ...]


class _IndexCache:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.routings: dict[tuple[Any, ...], _Routing] = {}


_CACHES: weakref.WeakKeyDictionary[AgreementIndex, _IndexCache] = weakref.WeakKeyDictionary()
_ROUTING_LIMIT = 4096


def _routing(
    index: AgreementIndex,
    registry: Registry,
    minted: bool,
    candidates: list[tuple[str, NormalizedObject]],
    changed: NormalizedObject | None,
    now: datetime,
) -> _Routing:
    """The decisions for every subscriber and candidate source, grouped for minting.

    They depend only on each source's decision profile (AgreementIndex.profile) and the
    agreements' term period, so keys whose sources look alike (the common case: one feed's
    indicators) share one routing across events."""
    profiles = [index.profile(rec) for _, rec in candidates]
    changed_pos = next((n for n, (_, rec) in enumerate(candidates) if rec is changed), -1)
    if changed is None:
        changed_profile = None
    else:
        changed_profile = profiles[changed_pos] if changed_pos >= 0 else index.profile(changed)
    cacheable = changed_profile is not None or changed is None
    cacheable = cacheable and all(p is not None for p in profiles)
    cache = _CACHES.get(index)
    if cache is None or cache.registry is not registry:
        cache = _CACHES[index] = _IndexCache(registry)
    key = (minted, index.period(now), changed_pos, changed_profile, tuple(profiles))
    if cacheable:
        found = cache.routings.get(key)
        if found is not None:
            return found
    routing = _decide_all(index, registry, minted, candidates, profiles, changed, changed_pos, now)
    if cacheable and all(
        shareable(d) for row in routing.rows for d in (row.first, *(d for _, d in row.allowed)) if d
    ):
        if len(cache.routings) >= _ROUTING_LIMIT:
            cache.routings.clear()
        cache.routings[key] = routing
    return routing


def _decide_all(
    index: AgreementIndex,
    registry: Registry,
    minted: bool,
    candidates: list[tuple[str, NormalizedObject]],
    profiles: list[tuple[Any, ...] | None],
    changed: NormalizedObject | None,
    changed_pos: int,
    now: datetime,
) -> _Routing:
    decide = index.decide_profiled
    publishers = [registry.get(rec.publisher) for _, rec in candidates]
    changed_publisher = registry.get(changed.publisher) if changed is not None else None
    changed_profile = index.profile(changed) if changed is not None else None
    rows: list[_Row] = []
    groups: dict[tuple[Any, ...], int] = {}
    shapes: dict[tuple[Any, ...], int] = {}
    group_list: list[_Group] = []
    for subscriber in registry.subscribers:
        first = None
        if changed is not None and changed_publisher is not None:
            first = decide(changed, changed_profile, changed_publisher, subscriber, now)
        allowed: list[tuple[int, Decision]] = []
        for pos, (_, rec) in enumerate(candidates):
            if pos == changed_pos and first is not None:
                decision = first
            else:
                decision = decide(rec, profiles[pos], publishers[pos], subscriber, now)
            if decision.allow:
                allowed.append((pos, decision))
        group = -1
        if minted and allowed:
            signature = tuple(
                (pos, d.agreement_id, d.agreement_version, d.attribution, d.onward_sharing)
                for pos, d in allowed
            )
            group = groups.get(signature, -1)
            if group < 0:
                group = groups[signature] = len(group_list)
                shape_key = (
                    tuple(
                        (
                            pos,
                            d.attribution,
                            d.agreement_id if d.attribution is Attribution.PSEUDONYMOUS else None,
                        )
                        for pos, d in allowed
                    ),
                    all(d.onward_sharing for _, d in allowed),
                )
                shape = shapes.setdefault(shape_key, len(shapes))
                group_list.append(_group(shape, allowed, index, registry))
        rows.append(_Row(subscriber, first, tuple(allowed), group))
    return _Routing(tuple(rows), tuple(group_list))


def _group(
    shape: int, allowed: list[tuple[int, Decision]], index: AgreementIndex, registry: Registry
) -> _Group:
    decisions = [d for _, d in allowed]
    chosen = max(decisions, key=lambda d: (d.onward_sharing, d.agreement_id or ""))
    companions = [bus_identity(registry)]
    agreements = _agreements_by_id(index)
    for decision in decisions:
        agreement = agreements.get(decision.agreement_id or "")
        if agreement is not None:
            new = companion_objects(decision, agreement, registry)
            companions += [c for c in new if c not in companions]
    return _Group(
        shape=shape,
        positions=tuple(pos for pos, _ in allowed),
        decisions=tuple(decisions),
        extra_markings=(
            []
            if all(d.onward_sharing for d in decisions)
            else [no_onward_sharing_marking_id(registry)]
        ),
        agreement_id=chosen.agreement_id,
        agreement_version=chosen.agreement_version,
        companions=companions,
    )


@lru_cache(maxsize=8)
def _agreements_by_id(index: AgreementIndex) -> dict[str, Agreement]:
    return {a.id: a for a in index.agreements}


# --- minting ---------------------------------------------------------------------------------


class _Minted(NamedTuple):
    body: dict[str, Any]
    source_ids: tuple[str, ...]  # sorted
    companions: list[dict[str, Any]]
    agreement_id: str | None
    agreement_version: int | None
    stamp: datetime  # Kafka time of the newest source record behind it
    created: str  # the same as a STIX timestamp


class _Summary(NamedTuple):
    """The part of a minted body that depends on the sources only, not on the agreements."""

    name: str
    valid_from: str
    tlp: TLP
    valid_until: str | None
    confidence: int | None
    indicator_types: list[str]
    labels: list[str]
    stamp: datetime
    created: str


def _build(
    state: KeyState,
    group: _Group,
    candidates: list[tuple[str, NormalizedObject]],
    summaries: dict[tuple[str, ...], _Summary],
    registry: Registry,
) -> _Minted:
    """The minted body a group of subscribers gets (sources in id order)."""
    ordered = sorted(
        zip(group.positions, group.decisions, strict=True), key=lambda x: candidates[x[0]][0]
    )
    source_ids = tuple(candidates[pos][0] for pos, _ in ordered)
    summary = summaries.get(source_ids)
    if summary is None:
        summary = summaries[source_ids] = _summarise([state.sources[s] for s in source_ids])
    markings = [summary.tlp.marking_id, *group.extra_markings]
    body: dict[str, Any] = {
        "name": summary.name,
        "pattern": state.canonical_pattern,
        "pattern_type": "stix",
        "valid_from": summary.valid_from,
        "object_marking_refs": markings,
        "x_stixbus_sources": [
            _source_ref(state.sources[candidates[pos][0]], decision, registry)
            for pos, decision in ordered
        ],
    }
    if summary.valid_until is not None:
        body["valid_until"] = summary.valid_until
    if summary.confidence is not None:
        body["confidence"] = summary.confidence
    if summary.indicator_types:
        body["indicator_types"] = summary.indicator_types
    if summary.labels:
        body["labels"] = summary.labels
    return _Minted(
        body,
        source_ids,
        group.companions,
        group.agreement_id,
        group.agreement_version,
        summary.stamp,
        summary.created,
    )


def _summarise(sources: list[SourceVersion]) -> _Summary:
    """valid_from = earliest, valid_until = latest (absent if one has none), confidence =
    highest, indicator_types/labels = union, name = the first source's with one."""
    if len(sources) == 1:  # the common case, without the folding
        rec = sources[0].record
        o, stamp = rec.object, rec.published_at
        until, confidence = o.get("valid_until"), o.get("confidence")
        return _Summary(
            name=str(o["name"]) if o.get("name") else "stixbus indicator",
            valid_from=str(o["valid_from"]),
            tlp=rec.tlp,
            valid_until=until if isinstance(until, str) else None,
            confidence=confidence if isinstance(confidence, int) else None,
            indicator_types=sorted({t for t in o.get("indicator_types", []) if isinstance(t, str)}),
            labels=sorted({t for t in o.get("labels", []) if isinstance(t, str)}),
            stamp=stamp,
            created=stix_time(stamp),
        )
    objects = [s.record.object for s in sources]
    untils = [o.get("valid_until") for o in objects]
    confidences = [o["confidence"] for o in objects if isinstance(o.get("confidence"), int)]
    stamp = max(s.record.published_at for s in sources)
    return _Summary(
        name=next((str(o["name"]) for o in objects if o.get("name")), "stixbus indicator"),
        valid_from=min(
            (str(o["valid_from"]) for o in objects if "valid_from" in o), key=parse_time
        ),
        tlp=max(s.record.tlp for s in sources),
        valid_until=(
            max((str(u) for u in untils), key=parse_time)
            if all(isinstance(u, str) for u in untils)
            else None
        ),
        confidence=max(confidences) if confidences else None,
        indicator_types=sorted(
            {t for o in objects for t in o.get("indicator_types", []) if isinstance(t, str)}
        ),
        labels=sorted({t for o in objects for t in o.get("labels", []) if isinstance(t, str)}),
        stamp=stamp,
        created=stix_time(stamp),
    )


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
    stamp = _vouching_ended(state, previous)
    view = _view(previous, previous.source_ids, _next_modified(previous, stamp), True)
    revoked = _object(view, ids(subscriber.id), registry.bus.identity_id)
    return _delivery(subscriber, revoked, [], previous.agreement_id, True, None), view


def _plan_minted(
    subscriber: Org,
    minted: _Minted,
    previous: SubscriberView | None,
    registry: Registry,
    config: RouteConfig,
    ids: Uuid5Prefix,
) -> tuple[Delivery | None, SubscriberView | None]:
    body, source_ids = minted.body, minted.source_ids
    if previous is not None:
        assert previous.body is not None
        if previous.body is body or not _material_change(previous.body, body, registry, config):
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
        modified = _next_modified(previous, stamp)
    else:
        created = modified = minted.created
    view = SubscriberView(
        source_ids, minted.agreement_id, minted.agreement_version, created, modified, False, body
    )
    obj = _object(view, ids(subscriber.id), registry.bus.identity_id)
    delivery = Delivery(subscriber.id, obj, minted.companions, minted.agreement_id, False, stamp)
    return delivery, view


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
    old: dict[str, Any], body: dict[str, Any], registry: Registry, config: RouteConfig
) -> bool:
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
    return _agreements_by_id(index).get(decision.agreement_id or "")


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
    return max(ends) if ends else parse_time(str(previous.modified))


def _next_modified(previous: SubscriberView | None, now: datetime) -> str:
    """A version timestamp strictly after the last one delivered (inputs can be out of order).

    STIX timestamps here carry milliseconds, so compare at that precision."""
    candidate = now.astimezone(UTC).replace(microsecond=now.microsecond // 1000 * 1000)
    if previous is not None and previous.modified is not None:
        last = parse_time(previous.modified)
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


def audit_records(plan: Plan, now: datetime) -> list[dict[str, Any]]:
    """One audit record per decision (allow and deny), saying whether it led to a delivery."""
    delivered = {d.subscriber for d in plan.deliveries}
    return [
        {
            **decision.as_record(),
            "decided_at": now.isoformat(),
            "delivered": decision.allow and decision.subscriber in delivered,
        }
        for decision in plan.decisions
    ]
