"""Agreement decisions for every subscriber of one key (pure), grouped for minting and cached
per source decision profiles (docs/dedup.md, "Speed")."""

from __future__ import annotations

import weakref
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

from schemas.agreement import Agreement, Attribution
from schemas.envelope import NormalizedObject
from schemas.org import Org, Registry
from stixbus.core.decide import AgreementIndex
from stixbus.core.decision import Decision, shareable
from stixbus.core.guard import NO_HITS, Hits, WarninglistIndex
from stixbus.core.redact import (
    bus_identity,
    companion_objects,
    no_onward_sharing_marking_id,
)

# --- routing: agreement decisions for all subscribers, cached per source profiles -----------


class Group(NamedTuple):
    """Subscribers that see the same sources under the same agreement terms share one body."""

    shape: int  # groups of equal shape (sources, attribution, markings) mint equal bodies
    positions: tuple[int, ...]  # candidate sources allowed
    decisions: tuple[Decision, ...]
    extra_markings: list[str]  # the no-onward-sharing marking when an agreement forbids it
    agreement_id: str | None
    agreement_version: int | None
    companions: list[dict[str, Any]]
    max_age: timedelta | None = None  # the shortest max_age of its agreements (core/decay.py)


class Row(NamedTuple):
    subscriber: Org
    first: Decision | None  # for the changed source (audited)
    allowed: tuple[tuple[int, Decision], ...]  # candidate positions allowed, with decisions
    group: int  # minted: index into Routing.groups; -1: nothing allowed


class Routing(NamedTuple):
    rows: tuple[Row, ...]
    groups: tuple[Group, ...]


class _IndexCache:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.routings: dict[tuple[Any, ...], Routing] = {}


_CACHES: weakref.WeakKeyDictionary[AgreementIndex, _IndexCache] = weakref.WeakKeyDictionary()
_ROUTING_LIMIT = 4096


def routing_for(
    index: AgreementIndex,
    registry: Registry,
    minted: bool,
    candidates: list[tuple[str, NormalizedObject]],
    changed: NormalizedObject | None,
    now: datetime,
    guard: WarninglistIndex | None = None,
) -> Routing:
    """The decisions for every subscriber and candidate source, grouped for minting.

    They depend only on each source's decision profile (AgreementIndex.profile), the
    warninglists its observables are on (`guard`, stixbus/core/guard.py) and the agreements'
    term period, so keys whose sources look alike (the common case: one feed's indicators)
    share one routing across events."""
    listed = _listed(guard, minted, candidates, changed)
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
    key = (minted, index.period(now), changed_pos, changed_profile, tuple(profiles), listed)
    if cacheable:
        found = cache.routings.get(key)
        if found is not None:
            return found
    routing = _decide_all(
        index, registry, minted, candidates, profiles, changed, changed_pos, now, listed
    )
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
    listed: tuple[Hits, ...],
) -> Routing:
    decide = index.decide_profiled
    changed_listed = listed[changed_pos] if changed_pos >= 0 else listed[-1]
    publishers = [registry.get(rec.publisher) for _, rec in candidates]
    changed_publisher = registry.get(changed.publisher) if changed is not None else None
    changed_profile = index.profile(changed) if changed is not None else None
    rows: list[Row] = []
    groups: dict[tuple[Any, ...], int] = {}
    shapes: dict[tuple[Any, ...], int] = {}
    group_list: list[Group] = []
    for subscriber in registry.subscribers:
        first = None
        if changed is not None and changed_publisher is not None:
            first = decide(
                changed, changed_profile, changed_publisher, subscriber, now, changed_listed
            )
        allowed: list[tuple[int, Decision]] = []
        for pos, (_, rec) in enumerate(candidates):
            if pos == changed_pos and first is not None:
                decision = first
            else:
                decision = decide(rec, profiles[pos], publishers[pos], subscriber, now, listed[pos])
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
                max_age = _max_age(index, allowed)
                shape_key = (
                    max_age,
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
                group_list.append(_group(shape, allowed, index, registry)._replace(max_age=max_age))
        rows.append(Row(subscriber, first, tuple(allowed), group))
    return Routing(tuple(rows), tuple(group_list))


def _group(
    shape: int, allowed: list[tuple[int, Decision]], index: AgreementIndex, registry: Registry
) -> Group:
    decisions = [d for _, d in allowed]
    chosen = max(decisions, key=lambda d: (d.onward_sharing, d.agreement_id or ""))
    companions = [bus_identity(registry)]
    agreements = agreements_by_id(index)
    for decision in decisions:
        agreement = agreements.get(decision.agreement_id or "")
        if agreement is not None:
            new = companion_objects(decision, agreement, registry)
            companions += [c for c in new if c not in companions]
    return Group(
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


def _max_age(index: AgreementIndex, allowed: list[tuple[int, Decision]]) -> timedelta | None:
    agreements = agreements_by_id(index)
    ages = [
        a.max_age
        for a in (agreements.get(d.agreement_id or "") for _, d in allowed)
        if a is not None and a.max_age is not None
    ]
    return min(ages) if ages else None


def _listed(
    guard: WarninglistIndex | None,
    minted: bool,
    candidates: list[tuple[str, NormalizedObject]],
    changed: NormalizedObject | None,
) -> tuple[Hits, ...]:
    """The warninglists of each candidate, then of `changed` (last).  A minted key's sources
    share one canonical pattern: one lookup serves them all."""
    count = len(candidates) + 1
    if guard is None:
        return (NO_HITS,) * count
    if minted:
        sample = changed if changed is not None else (candidates[0][1] if candidates else None)
        hits = guard.names_for(sample) if sample is not None else NO_HITS
        return (hits,) * count
    found = [guard.names_for(rec) for _, rec in candidates]
    found.append(guard.names_for(changed) if changed is not None else NO_HITS)
    return tuple(found)


@lru_cache(maxsize=8)
def agreements_by_id(index: AgreementIndex) -> dict[str, Agreement]:
    return {a.id: a for a in index.agreements}
