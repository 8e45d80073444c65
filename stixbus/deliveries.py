"""What each subscriber gets for one key (pure): agreement decisions, views, revocations.

Indicators with a canonical pattern are delivered as ONE bus-minted indicator per subscriber and
key (id = UUIDv5(bus namespace, key/subscriber), created_by_ref = the bus), built from the sources
that subscriber may see.  Other objects are forwarded as the producer made them, redacted per
agreement.  A new version goes out only on a material change; see docs/dedup.md.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

from schemas.agreement import Agreement, Attribution
from schemas.org import Org, Registry
from schemas.tlp import TLP
from stixbus.decide import AgreementIndex, Decision
from stixbus.dedup import KeyState, SourceVersion, SubscriberView, parse_time, with_views
from stixbus.redact import (
    apply_transformations,
    bus_identity,
    companion_objects,
    no_onward_sharing_marking_id,
    pseudonym_identity_id,
)

STIX_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


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


def stix_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def minted_id(registry: Registry, key: str, subscriber: str) -> str:
    return f"indicator--{fast_uuid5(registry.bus.namespace, f'{key}/{subscriber}')}"


def fast_uuid5(namespace: uuid.UUID, name: str) -> str:
    """`str(uuid.uuid5(namespace, name))` without building UUID objects (3x faster)."""
    h = hashlib.sha1(_namespace_bytes(namespace) + name.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


# RFC 4122 variant bits over the first hex digit of the clock sequence: 10xx.
_VARIANT = {f"{n:x}": f"{(n & 0x3) | 0x8:x}" for n in range(16)}


@lru_cache(maxsize=16)
def _namespace_bytes(namespace: uuid.UUID) -> bytes:
    return namespace.bytes


def minted_object(
    view: SubscriberView, key: str, subscriber: str, registry: Registry
) -> dict[str, Any]:
    """The indicator a minted view stands for, exactly as it was delivered."""
    assert view.body is not None
    obj = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": minted_id(registry, key, subscriber),
        "created": view.created,
        "modified": view.modified,
        "created_by_ref": registry.bus.identity_id,
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
    publisher_of = {p: registry.get(p) for p in {s.record.publisher for s in sources.values()}}
    # Decisions depend on a few properties of each source (its profile), so sources with the
    # same profile share them across keys and events (AgreementIndex.decide_profiled).  A
    # minted indicator is shaped only by the sources that still vouch.
    candidates = [
        (sid, src.record, index.profile(src.record), publisher_of[src.record.publisher])
        for sid, src in sources.items()
        if active[sid] or not minted
    ]
    changed = sources[changed_source].record if changed_source is not None else None
    changed_profile = index.profile(changed) if changed is not None else None
    shared = _Shared(state, registry, index, config, active)
    decide = index.decide_profiled
    for subscriber in registry.subscribers:
        previous = views.get(subscriber.id)
        first: Decision | None = None
        if changed is not None:
            first = decide(
                changed, changed_profile, publisher_of[changed.publisher], subscriber, now
            )
            audited.append(first)
            if not first.allow and (previous is None or changed_source not in previous.source_ids):
                # The new version is invisible to this subscriber and its copy does not rest on
                # that source: nothing it holds can change (expiry comes through ticks).
                continue
        if minted and previous is not None and previous.revoked:
            continue  # revoked is final
        allowed: dict[str, Decision] = {}
        for sid, rec, profile, publisher in candidates:
            if sid == changed_source and first is not None:
                decision = first
            else:
                decision = decide(rec, profile, publisher, subscriber, now)
            if decision.allow:
                allowed[sid] = decision
        if minted:
            delivery, view = _plan_minted(shared, subscriber, allowed, previous, now)
        else:
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


class _Minted(NamedTuple):
    body: dict[str, Any]
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


class _Shared:
    """What one plan computes once for all subscribers: minted bodies per (sources, decisions)
    signature, so that subscribers under the same agreement share one body (and one entry in
    the encoded state)."""

    def __init__(
        self,
        state: KeyState,
        registry: Registry,
        index: AgreementIndex,
        config: RouteConfig,
        active: dict[str, bool],
    ) -> None:
        self.state, self.registry, self.index, self.config = state, registry, index, config
        self.active = active
        self._minted: dict[tuple[Any, ...], _Minted] = {}
        self._summaries: dict[tuple[str, ...], _Summary] = {}
        self._refs: dict[tuple[Any, ...], dict[str, str]] = {}
        self._companions: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = {}

    def minted(self, vouching: list[tuple[str, Decision]]) -> _Minted:
        signature = tuple(
            (sid, d.agreement_id, d.agreement_version, d.attribution, d.onward_sharing)
            for sid, d in vouching
        )
        found = self._minted.get(signature)
        if found is None:
            found = self._minted[signature] = self._build(vouching)
        return found

    def _build(self, vouching: list[tuple[str, Decision]]) -> _Minted:
        registry, state = self.registry, self.state
        source_ids = tuple(sid for sid, _ in vouching)
        summary = self._summaries.get(source_ids)
        if summary is None:
            summary = self._summaries[source_ids] = _summarise(
                [state.sources[sid] for sid in source_ids]
            )
        decisions = [d for _, d in vouching]
        markings = [summary.tlp.marking_id]
        if not all(d.onward_sharing for d in decisions):
            markings.append(no_onward_sharing_marking_id(registry))
        refs = []
        for sid, decision in vouching:
            ref_key = (sid, decision.attribution, decision.agreement_id)
            ref = self._refs.get(ref_key)
            if ref is None:
                ref = self._refs[ref_key] = _source_ref(state.sources[sid], decision, registry)
            refs.append(ref)
        body: dict[str, Any] = {
            "name": summary.name,
            "pattern": state.canonical_pattern,
            "pattern_type": "stix",
            "valid_from": summary.valid_from,
            "object_marking_refs": markings,
            "x_stixbus_sources": refs,
        }
        if summary.valid_until is not None:
            body["valid_until"] = summary.valid_until
        if summary.confidence is not None:
            body["confidence"] = summary.confidence
        if summary.indicator_types:
            body["indicator_types"] = summary.indicator_types
        if summary.labels:
            body["labels"] = summary.labels
        chosen = max(decisions, key=lambda d: (d.onward_sharing, d.agreement_id or ""))
        parties = tuple(sorted({(d.agreement_id or "", d.publisher) for d in decisions}))
        companions = self._companions.get(parties)
        if companions is None:
            companions = self._companions[parties] = _companions(decisions, self.index, registry)
        return _Minted(
            body,
            companions,
            chosen.agreement_id,
            chosen.agreement_version,
            summary.stamp,
            summary.created,
        )


def _companions(
    decisions: list[Decision], index: AgreementIndex, registry: Registry
) -> list[dict[str, Any]]:
    """Bus-defined objects a minted indicator refers to (identities, markings)."""
    companions = [bus_identity(registry)]
    agreements = _agreements_by_id(index)
    for decision in decisions:
        agreement = agreements.get(decision.agreement_id or "")
        if agreement is not None:
            new = companion_objects(decision, agreement, registry)
            companions += [c for c in new if c not in companions]
    return companions


def _summarise(sources: list[SourceVersion]) -> _Summary:
    """valid_from = earliest, valid_until = latest (absent if one has none), confidence =
    highest, indicator_types/labels = union, name = the first source's with one."""
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


@lru_cache(maxsize=8)
def _agreements_by_id(index: AgreementIndex) -> dict[str, Agreement]:
    return {a.id: a for a in index.agreements}


def _plan_minted(
    shared: _Shared,
    subscriber: Org,
    allowed: dict[str, Decision],
    previous: SubscriberView | None,
    now: datetime,
) -> tuple[Delivery | None, SubscriberView | None]:
    state, registry = shared.state, shared.registry
    if not allowed:
        if previous is None:
            return None, None  # never deliver an indicator nobody still vouches for
        # Everyone it was built from is revoked or expired: tell the subscriber, whatever the
        # agreements say now (revocation reaches every subscriber that ever received it).
        if any(shared.active.get(s, False) for s in previous.source_ids):
            return None, None
        stamp = _vouching_ended(state, previous)
        view = _view(previous, previous.source_ids, _next_modified(previous, stamp), True)
        revoked = minted_object(view, state.key, subscriber.id, registry)
        return _delivery(subscriber, revoked, [], previous.agreement_id, True, None), view

    vouching = sorted(allowed.items())
    source_ids = tuple(sid for sid, _ in vouching)
    minted = shared.minted(vouching)
    body = minted.body
    if previous is not None:
        assert previous.body is not None
        if previous.body is body or not _material_change(
            previous.body, body, registry, shared.config
        ):
            if previous.source_ids == source_ids:
                return None, None
            # Nothing the subscriber must hear about, but remember which sources now back what
            # it holds (expiry checks them; a stale list would tick this key on every scan).
            return None, _view(previous, source_ids, previous.modified, False)
    # Version timestamps come from the inputs (Kafka time of the newest source record), never
    # from the wall clock: reprocessing after a crash re-mints the same (id, modified), which
    # the consumer's idempotent drop (stixbus.client.VersionFilter) then discards.
    stamp = minted.stamp
    if previous is not None:
        created = previous.created
        modified = _next_modified(previous, stamp)
    else:
        created = modified = minted.created
    view = SubscriberView(
        source_ids, minted.agreement_id, minted.agreement_version, created, modified, False, body
    )
    obj = minted_object(view, state.key, subscriber.id, registry)
    return _delivery(subscriber, obj, minted.companions, minted.agreement_id, False, stamp), view


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
