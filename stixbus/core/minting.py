"""Bus-minted indicators (pure): ids, bodies built from the sources a subscriber may see, and
when a new body is a material change.

Indicators with a canonical pattern are delivered as ONE bus-minted indicator per subscriber and
key (id = UUIDv5(bus namespace, key/subscriber), created_by_ref = the bus).  Planning
(stixbus/core/deliveries.py) decides who gets a new version; this module says what it looks like.
See docs/dedup.md.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from schemas.agreement import Attribution
from schemas.envelope import NormalizedObject
from schemas.org import Registry
from schemas.tlp import TLP
from stixbus.core.decay import accepted_since, capped_until
from stixbus.core.decision import Decision
from stixbus.core.dedup import KeyState, SourceVersion, SubscriberView
from stixbus.core.ids import parse_time, stix_time, uuid5
from stixbus.core.redact import pseudonym_identity_id
from stixbus.core.routing import Group


def minted_id(registry: Registry, key: str, subscriber: str) -> str:
    return f"indicator--{uuid5(registry.bus.namespace, f'{key}/{subscriber}')}"


def minted_object(
    view: SubscriberView, key: str, subscriber: str, registry: Registry
) -> dict[str, Any]:
    """The indicator a minted view stands for, exactly as it was delivered."""
    return minted_indicator(view, minted_id(registry, key, subscriber), registry.bus.identity_id)


def minted_indicator(view: SubscriberView, object_id: str, creator: str) -> dict[str, Any]:
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


# --- minting ---------------------------------------------------------------------------------


class Minted(NamedTuple):
    body: dict[str, Any]
    source_ids: tuple[str, ...]  # sorted
    companions: list[dict[str, Any]]
    agreement_id: str | None
    agreement_version: int | None
    stamp: datetime  # Kafka time of the newest source record behind it
    created: str  # the same as a STIX timestamp

    def expired(self, now: datetime) -> bool:
        """Past its valid_until: only an agreement's max_age does that (routing offers only
        sources that still vouch), see stixbus/core/decay.py."""
        until = self.body.get("valid_until")
        return isinstance(until, str) and parse_time(until) <= now


class Summary(NamedTuple):
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


def build_minted(
    state: KeyState,
    group: Group,
    candidates: list[tuple[str, NormalizedObject]],
    summaries: dict[tuple[str, ...], Summary],
    registry: Registry,
) -> Minted:
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
    valid_until = summary.valid_until
    if group.max_age is not None:
        since = max(
            accepted_since(state.sources[s].record.object, state.sources[s].record.published_at)
            for s in source_ids
        )
        valid_until = capped_until(valid_until, since, group.max_age)
    if valid_until is not None:
        body["valid_until"] = valid_until
    if summary.confidence is not None:
        body["confidence"] = summary.confidence
    if summary.indicator_types:
        body["indicator_types"] = summary.indicator_types
    if summary.labels:
        body["labels"] = summary.labels
    return Minted(
        body,
        source_ids,
        group.companions,
        group.agreement_id,
        group.agreement_version,
        summary.stamp,
        summary.created,
    )


def _summarise(sources: list[SourceVersion]) -> Summary:
    """valid_from = earliest, valid_until = latest (absent if one has none), confidence =
    highest, indicator_types/labels = union, name = the first source's with one."""
    if len(sources) == 1:  # the common case, without the folding
        rec = sources[0].record
        o, stamp = rec.object, rec.published_at
        until, confidence = o.get("valid_until"), o.get("confidence")
        return Summary(
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
    return Summary(
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


def material_change(
    old: dict[str, Any], body: dict[str, Any], registry: Registry, confidence_step: int
) -> bool:
    old_until, new_until = old.get("valid_until"), body.get("valid_until")
    if old_until is not None and (
        new_until is None or parse_time(str(new_until)) > parse_time(str(old_until))
    ):
        return True  # validity extended (or now open-ended)
    old_conf, new_conf = old.get("confidence"), body.get("confidence")
    if isinstance(old_conf, int) and isinstance(new_conf, int):
        if abs(new_conf - old_conf) >= confidence_step:
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


def vouching_ended(state: KeyState, previous: SubscriberView) -> datetime:
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


def next_modified(previous: SubscriberView | None, now: datetime) -> str:
    """A version timestamp strictly after the last one delivered (inputs can be out of order).

    STIX timestamps here carry milliseconds, so compare at that precision."""
    candidate = now.astimezone(UTC).replace(microsecond=now.microsecond // 1000 * 1000)
    if previous is not None and previous.modified is not None:
        last = parse_time(previous.modified)
        if candidate <= last:
            candidate = last + timedelta(milliseconds=1)
    return stix_time(candidate)
