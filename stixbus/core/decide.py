"""The routing decision: may this subscriber receive this object from this publisher, and how?

Pure and fail-closed.  `decide` answers for one (object, publisher, subscriber); the same answer
serves routing, the audit record and "explain".  Speed comes from `AgreementIndex`, compiled once
per (agreement set, registry): it resolves sectors to orgs and keeps, per (publisher, subscriber)
pair, the candidate agreements already reduced to plain sets and numbers.

Rules (docs/agreements.md has the table):
- unknown publisher/subscriber, self-delivery, missing roles, unknown markings: deny up front;
- a candidate agreement allows when its term holds, the TLP is within its ceiling (RED and
  AMBER+STRICT only to subscribers it names one by one), and type, observable, label and
  confidence filters all pass;
- of the candidates that allow, the most permissive wins (`permissiveness`); a deny lists every
  reason from every candidate.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from schemas.agreement import ANY, SECTOR_PREFIX, Agreement, AgreementSet, Attribution, MatchMode
from schemas.envelope import NormalizedObject
from schemas.org import Org, Registry, Sector
from schemas.tlp import MARKING_TLP, TLP
from stixbus.core.decision import (
    Decision,
    Reason,
    ReasonCode,
    Transformation,
    TransformKind,
    shareable,
)
from stixbus.core.guard import MEMBER_PREFIX, NO_HITS, Hits


def permissiveness(agreement: Agreement) -> tuple[int, int, int, str]:
    """Sort key, larger is more permissive: attribution, then onward sharing, then fewer
    redactions; ties go to the alphabetically first id so the choice is deterministic."""
    redactions = len(agreement.redaction.drop_custom_properties) + len(
        agreement.redaction.pseudonymise
    )
    inverted_id = "".join(chr(0x10FFFF - ord(c)) for c in agreement.id)
    return (agreement.attribution.rank, int(agreement.onward_sharing), -redactions, inverted_id)


def planned_transformations(agreement: Agreement) -> tuple[Transformation, ...]:
    """What `stixbus.core.redact.apply_transformations` will do under this agreement."""
    steps: list[Transformation] = []
    if agreement.attribution is Attribution.PSEUDONYMOUS:
        steps.append(
            Transformation(
                TransformKind.CREATOR_TO_PSEUDONYM,
                f"creator references become the producer's pseudonym for {agreement.id}",
            )
        )
    elif agreement.attribution is Attribution.ANONYMOUS:
        steps.append(
            Transformation(TransformKind.CREATOR_TO_BUS, "creator references become the bus")
        )
    if agreement.redaction.drop_custom_properties:
        steps.append(
            Transformation(
                TransformKind.DROP_CUSTOM_PROPERTIES,
                ", ".join(agreement.redaction.drop_custom_properties),
            )
        )
    if agreement.redaction.pseudonymise:
        steps.append(
            Transformation(
                TransformKind.PSEUDONYMISE_PROPERTIES, ", ".join(agreement.redaction.pseudonymise)
            )
        )
    if not agreement.onward_sharing:
        steps.append(
            Transformation(TransformKind.MARK_NO_ONWARD_SHARING, "statement marking added")
        )
    if agreement.rewrites_content:
        steps.append(
            Transformation(
                TransformKind.NEW_OBJECT_ID,
                "content differs from the producer's: delivered under a derived id",
            )
        )
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One agreement reduced to what the per-decision checks touch."""

    agreement: Agreement
    id: str
    version: int
    valid_from: datetime
    valid_until: datetime
    ceiling: TLP
    named_subscribers: frozenset[str]
    object_types: frozenset[str] | None  # None: any
    observable_types: frozenset[str] | None  # None: any
    label_mode_all: bool
    label_values: frozenset[str] | None  # casefolded; None: no label filter
    label_fields: tuple[str, ...]
    min_confidence: int | None
    rank: tuple[int, int, int, str]
    transformations: tuple[Transformation, ...]
    allowed_reason: Reason
    # Deny reasons built once per agreement: a deny then costs no string formatting.  They name
    # the agreement's rule; the object side is in the audit record next to the decision.
    not_yet_valid: Reason
    expired: Reason
    above_ceiling: dict[TLP, Reason]
    red_not_named: Reason
    amber_strict_not_named: Reason
    object_type_not_allowed: Reason
    observable_type_not_allowed: Reason
    labels_not_matched: Reason
    confidence_missing: Reason
    confidence_below_minimum: Reason
    # The false-positive guard: lists this agreement opts out of ("*": every maintained list).
    opt_out: frozenset[str]
    opt_out_all: bool
    listed: dict[str, Reason]  # deny reason per warninglist, filled on first use

    def listed_reason(self, name: str) -> Reason:
        reason = self.listed.get(name)
        if reason is None:
            if name.startswith(MEMBER_PREFIX):
                rule = "an org's own domains and networks, which no agreement may opt out of"
            else:
                rule = f"agreement {self.id} does not opt out of it (warninglist_opt_out)"
            reason = self.listed[name] = Reason(
                ReasonCode.WARNINGLIST,
                f"an observable of the object is on warninglist {name}: {rule}",
                self.id,
                name,
            )
        return reason


def _compile(agreement: Agreement) -> _Compiled:
    labels = agreement.labels
    aid = agreement.id

    def reason(code: ReasonCode, message: str) -> Reason:
        return Reason(code, message, aid)

    ceiling = agreement.tlp_ceiling
    label_rule = (
        ""
        if labels is None
        else f"{labels.mode.value} of {', '.join(labels.values)} in "
        f"{'/'.join(f.value for f in labels.fields)}"
    )
    return _Compiled(
        agreement=agreement,
        id=aid,
        version=agreement.version,
        valid_from=agreement.term.valid_from,
        valid_until=agreement.term.valid_until,
        ceiling=ceiling,
        named_subscribers=agreement.named_subscribers,
        object_types=None if agreement.any_object_type else frozenset(agreement.object_types),
        observable_types=(
            None if agreement.any_observable_type else frozenset(agreement.observable_types)
        ),
        label_mode_all=labels is not None and labels.mode is MatchMode.ALL,
        label_values=None if labels is None else frozenset(v.casefold() for v in labels.values),
        label_fields=() if labels is None else tuple(f.value for f in labels.fields),
        min_confidence=agreement.min_confidence,
        rank=permissiveness(agreement),
        transformations=planned_transformations(agreement),
        allowed_reason=reason(
            ReasonCode.ALLOWED,
            f"allowed by agreement {aid} v{agreement.version} "
            f"({agreement.purpose.code.value}, {agreement.attribution.value})",
        ),
        not_yet_valid=reason(
            ReasonCode.AGREEMENT_NOT_YET_VALID,
            f"agreement {aid} starts {agreement.term.valid_from.isoformat()}",
        ),
        expired=reason(
            ReasonCode.AGREEMENT_EXPIRED,
            f"agreement {aid} ended {agreement.term.valid_until.isoformat()}",
        ),
        above_ceiling={
            tlp: reason(
                ReasonCode.TLP_ABOVE_CEILING,
                f"TLP:{tlp.label} is above the ceiling TLP:{ceiling.label} of agreement {aid}",
            )
            for tlp in TLP
            if tlp > ceiling
        },
        red_not_named=reason(
            ReasonCode.RED_REQUIRES_NAMED_RECIPIENT,
            f"TLP:RED goes only to subscribers agreement {aid} names one by one, "
            "not to those it covers through a sector",
        ),
        amber_strict_not_named=reason(
            ReasonCode.AMBER_STRICT_NOT_NAMED,
            f"TLP:AMBER+STRICT goes only to subscribers agreement {aid} names one by one, "
            "not to those it covers through a sector",
        ),
        object_type_not_allowed=reason(
            ReasonCode.OBJECT_TYPE_NOT_ALLOWED,
            f"the object type is not in agreement {aid}'s object_types "
            f"({', '.join(agreement.object_types)})",
        ),
        observable_type_not_allowed=reason(
            ReasonCode.OBSERVABLE_TYPE_NOT_ALLOWED,
            f"the object has no observables or one outside agreement {aid}'s observable_types "
            f"({', '.join(agreement.observable_types)})",
        ),
        labels_not_matched=reason(
            ReasonCode.LABELS_NOT_MATCHED, f"agreement {aid} needs {label_rule}"
        ),
        confidence_missing=reason(
            ReasonCode.CONFIDENCE_MISSING,
            f"agreement {aid} needs confidence >= {agreement.min_confidence}; "
            "the object states none",
        ),
        confidence_below_minimum=reason(
            ReasonCode.CONFIDENCE_BELOW_MINIMUM,
            f"the object's confidence is below agreement {aid}'s minimum "
            f"{agreement.min_confidence}",
        ),
        opt_out=frozenset(agreement.warninglist_opt_out),
        opt_out_all=ANY in agreement.warninglist_opt_out,
        listed={},
    )


def resolve_parties(parties: Sequence[str], registry: Registry) -> set[str]:
    """The org ids an agreement's party list stands for: named orgs the registry knows, and
    every org of each `sector:<sector>` (the bus's one sector resolver)."""
    orgs: set[str] = set()
    for party in parties:
        if party.startswith(SECTOR_PREFIX):
            sector = Sector(party.removeprefix(SECTOR_PREFIX))
            orgs.update(o.id for o in registry.in_sector(sector))
        elif party in registry.by_id:
            orgs.add(party)
    return orgs


@dataclass(frozen=True, slots=True)
class _Pair:
    candidates: tuple[_Compiled, ...]
    # Precomputed because a pair with no candidate always denies the same way.
    no_match_reasons: tuple[Reason, ...]
    # Deny reasons that hold for every object on this pair (self-delivery, roles).
    pair_reasons: tuple[Reason, ...]


class AgreementIndex:
    """Agreements compiled against a registry; build once per agreement-set version."""

    def __init__(self, agreements: AgreementSet | Sequence[Agreement], registry: Registry) -> None:
        self.registry = registry
        self.agreements: tuple[Agreement, ...] = tuple(agreements)
        self._compiled = tuple(_compile(a) for a in self.agreements)
        self._publishers_of = {
            c.id: resolve_parties(c.agreement.publishers, registry) for c in self._compiled
        }
        self._subscribers_of = {
            c.id: resolve_parties(c.agreement.subscribers, registry) for c in self._compiled
        }
        # Filled on first use of each (publisher, subscriber): a hot reload pays only for the
        # pairs that traffic actually touches.
        self._pairs: dict[tuple[str, str], _Pair] = {}
        # Decisions are constant between two consecutive term boundaries of the agreements.
        self._boundaries = tuple(
            sorted({c.valid_from for c in self._compiled} | {c.valid_until for c in self._compiled})
        )
        self._memo: dict[tuple[Any, ...], Decision] = {}

    def period(self, now: datetime) -> int:
        """Which stretch between agreement term boundaries `now` is in: decisions for equal
        profiles are equal within one period."""
        return bisect_right(self._boundaries, now)

    @staticmethod
    def profile(obj: NormalizedObject) -> tuple[Any, ...] | None:
        """Everything of `obj` that `decide` reads except its id: objects with equal profiles
        get the same decision (see `decide_profiled`).  Keep in step with `decide`/`_check`.
        None when it cannot be computed (then `decide_profiled` just decides)."""
        stix = obj.object
        try:
            values = orjson.dumps(
                [
                    stix.get("object_marking_refs"),
                    stix.get("granular_markings"),
                    stix.get("labels"),
                    stix.get("indicator_types"),
                    stix.get("confidence"),
                ]
            )
        except (TypeError, orjson.JSONEncodeError):
            return None
        return (
            obj.publisher,
            obj.tlp,
            obj.object_type,
            tuple(obj.observable_types),
            values,
        )

    def decide_profiled(
        self,
        obj: NormalizedObject,
        profile: tuple[Any, ...] | None,
        publisher: Org,
        subscriber: Org,
        now: datetime,
        listed: Hits = NO_HITS,
    ) -> Decision:
        """`decide`, memoised per (profile, publisher, subscriber, term period, list hits).

        For hot loops over many objects with few distinct profiles (the route stage decides
        every held source of a key for every subscriber on every event).  `publisher` and
        `subscriber` must be this index's registry entries."""
        if profile is None or now.tzinfo is None:
            return self.decide(obj, publisher, subscriber, now, listed)
        key = (profile, publisher.id, subscriber.id, bisect_right(self._boundaries, now), listed)
        found = self._memo.get(key)
        if found is None:
            found = self.decide(obj, publisher, subscriber, now, listed)
            if shareable(found):
                if len(self._memo) >= _MEMO_LIMIT:
                    self._memo.clear()
                self._memo[key] = found
        elif found.object_id != obj.object_id:
            # Decision._replace(object_id=...), at a third of its cost
            found = Decision._make((*found[:3], obj.object_id, *found[4:]))
        return found

    def _pair(self, pub: Org, sub: Org) -> _Pair:
        candidates = tuple(
            c
            for c in self._compiled
            if pub.id in self._publishers_of[c.id] and sub.id in self._subscribers_of[c.id]
        )
        pair = _Pair(
            candidates=candidates,
            no_match_reasons=self._no_match_reasons(
                pub, sub, self._compiled, self._publishers_of, self._subscribers_of
            ),
            pair_reasons=self._pair_reasons(pub, sub),
        )
        self._pairs[(pub.id, sub.id)] = pair
        return pair

    @staticmethod
    def _pair_reasons(pub: Org, sub: Org) -> tuple[Reason, ...]:
        reasons: list[Reason] = []
        if pub.id == sub.id:
            reasons.append(
                Reason(
                    ReasonCode.SELF_DELIVERY,
                    f"{sub.id} published this object; the bus does not echo it back",
                )
            )
        if not pub.publishes:
            reasons.append(
                Reason(
                    ReasonCode.PUBLISHER_ROLE_MISSING,
                    f"{pub.id} lacks the publisher role in the org registry",
                )
            )
        if not sub.subscribes:
            reasons.append(
                Reason(
                    ReasonCode.SUBSCRIBER_ROLE_MISSING,
                    f"{sub.id} lacks the subscriber role in the org registry",
                )
            )
        return tuple(reasons)

    @staticmethod
    def _no_match_reasons(
        pub: Org,
        sub: Org,
        compiled: Sequence[_Compiled],
        publishers_of: dict[str, set[str]],
        subscribers_of: dict[str, set[str]],
    ) -> tuple[Reason, ...]:
        reasons = [
            Reason(
                ReasonCode.NO_MATCHING_AGREEMENT,
                f"no agreement has {pub.id} as publisher and {sub.id} as subscriber",
            )
        ]
        for c in compiled:
            pub_in, sub_in = pub.id in publishers_of[c.id], sub.id in subscribers_of[c.id]
            if sub_in and not pub_in:
                reasons.append(
                    Reason(
                        ReasonCode.PUBLISHER_NOT_PARTY,
                        f"{pub.id} is not a publisher of agreement {c.id}",
                        c.id,
                    )
                )
            elif pub_in and not sub_in:
                reasons.append(
                    Reason(
                        ReasonCode.SUBSCRIBER_NOT_PARTY,
                        f"{sub.id} is not a subscriber of agreement {c.id}",
                        c.id,
                    )
                )
        return tuple(reasons)

    def decide(
        self,
        obj: NormalizedObject,
        publisher: Org,
        subscriber: Org,
        now: datetime,
        listed: Hits = NO_HITS,
    ) -> Decision:
        """`listed`: the warninglists the object's observables are on
        (`stixbus.core.guard.WarninglistIndex.names_for`); each candidate agreement that does
        not opt out of one denies with `warninglist:<list>`."""
        pub_id, sub_id, object_id = publisher.id, subscriber.id, obj.object_id
        if now.tzinfo is None:
            raise ValueError("decide needs a timezone-aware `now` (agreement terms are in UTC)")
        by_id = self.registry.by_id
        known_pub, known_sub = by_id.get(pub_id), by_id.get(sub_id)
        if not (known_pub is publisher or known_pub == publisher) or not (
            known_sub is subscriber or known_sub == subscriber
        ):
            return _deny(
                pub_id, sub_id, object_id, _unknown_org_reasons(publisher, subscriber, by_id)
            )
        if obj.publisher != pub_id:
            reason = Reason(
                ReasonCode.PUBLISHER_MISMATCH,
                f"object {object_id} was published by {obj.publisher}, not {pub_id}",
            )
            return _deny(pub_id, sub_id, object_id, (reason,))
        pair = self._pairs.get((pub_id, sub_id)) or self._pair(known_pub, known_sub)
        if pair.pair_reasons:
            return _deny(pub_id, sub_id, object_id, pair.pair_reasons)

        tlp, unknown = _effective_tlp(obj)
        if unknown:
            reason = Reason(
                ReasonCode.UNKNOWN_MARKING,
                f"object {object_id} carries marking(s) the bus does not know: "
                f"{', '.join(unknown)}; only TLP markings are routable",
            )
            return _deny(pub_id, sub_id, object_id, (reason,))
        if not pair.candidates:
            return _deny(pub_id, sub_id, object_id, pair.no_match_reasons)

        best: _Compiled | None = None
        allowed: list[_Compiled] = []
        denials: list[Reason] = []
        tags: dict[tuple[str, ...], set[str]] = {}
        for c in pair.candidates:
            failures = _check(c, obj, tlp, sub_id, now, tags)
            if listed:
                for name in listed:
                    if name.startswith(MEMBER_PREFIX) or not (c.opt_out_all or name in c.opt_out):
                        failures.append(c.listed_reason(name))
            if failures:
                denials.extend(failures)
                continue
            allowed.append(c)
            if best is None or c.rank > best.rank:
                best = c
        if best is None:
            return _deny(pub_id, sub_id, object_id, tuple(denials))

        # AMBER+STRICT reaches the recipient organisation only, whatever the agreement says.
        onward = best.agreement.onward_sharing and tlp < TLP.AMBER_STRICT
        return Decision(
            allow=True,
            publisher=pub_id,
            subscriber=sub_id,
            object_id=object_id,
            reasons=(best.allowed_reason,),
            agreement_id=best.id,
            agreement_version=best.version,
            attribution=best.agreement.attribution,
            onward_sharing=onward,
            transformations=best.transformations,
            also_allowed_by=tuple(c.id for c in allowed if c is not best),
        )


_MEMO_LIMIT = 65536


def _deny(pub: str, sub: str, object_id: str, reasons: tuple[Reason, ...]) -> Decision:
    return Decision(
        allow=False, publisher=pub, subscriber=sub, object_id=object_id, reasons=reasons
    )


def _unknown_org_reasons(
    publisher: Org, subscriber: Org, by_id: dict[str, Org]
) -> tuple[Reason, ...]:
    reasons = []
    for role, org in (("publisher", publisher), ("subscriber", subscriber)):
        known = by_id.get(org.id)
        if known is None:
            message = f"{role} {org.id} is not in the org registry"
        elif known != org:
            message = f"{role} {org.id} differs from its registry entry (stale registry?)"
        else:
            continue
        reasons.append(Reason(ReasonCode.UNKNOWN_ORG, message))
    return tuple(reasons)


def _effective_tlp(obj: NormalizedObject) -> tuple[TLP, list[str]]:
    """The object's TLP (never below what its own markings say) and any unknown marking ids."""
    tlp = obj.tlp
    unknown: list[str] = []
    stix = obj.object
    refs = stix.get("object_marking_refs")
    if refs:
        for ref in refs:
            marked = MARKING_TLP.get(ref)
            if marked is None:
                unknown.append(str(ref))
            elif marked > tlp:
                tlp = marked
    granular = stix.get("granular_markings")
    if granular:
        for entry in granular:
            ref = entry.get("marking_ref") if isinstance(entry, dict) else None
            marked = MARKING_TLP.get(ref) if isinstance(ref, str) else None
            if marked is None:
                unknown.append(str(ref))
            elif marked > tlp:
                tlp = marked
    return tlp, unknown


def _check(
    c: _Compiled,
    obj: NormalizedObject,
    tlp: TLP,
    sub_id: str,
    now: datetime,
    tags: dict[tuple[str, ...], set[str]],
) -> list[Reason]:
    failures: list[Reason] = []
    if now < c.valid_from:
        failures.append(c.not_yet_valid)
    elif now >= c.valid_until:
        failures.append(c.expired)
    if tlp > c.ceiling:
        failures.append(c.above_ceiling[tlp])
    elif tlp >= TLP.AMBER_STRICT and sub_id not in c.named_subscribers:
        failures.append(c.red_not_named if tlp is TLP.RED else c.amber_strict_not_named)
    if c.object_types is not None and obj.object_type not in c.object_types:
        failures.append(c.object_type_not_allowed)
    if c.observable_types is not None:
        observed = obj.observable_types
        if not observed or not c.observable_types.issuperset(observed):
            failures.append(c.observable_type_not_allowed)
    if c.label_values is not None and not _labels_match(c, obj.object, tags):
        failures.append(c.labels_not_matched)
    if c.min_confidence is not None:
        confidence = obj.object.get("confidence")
        if type(confidence) is not int:
            failures.append(c.confidence_missing)
        elif confidence < c.min_confidence:
            failures.append(c.confidence_below_minimum)
    return failures


def _labels_match(
    c: _Compiled, stix: dict[str, Any], tags: dict[tuple[str, ...], set[str]]
) -> bool:
    """`tags` caches the object's casefolded values per field list across candidates."""
    assert c.label_values is not None
    present = tags.get(c.label_fields)
    if present is None:
        present = set()
        for name in c.label_fields:
            values = stix.get(name)
            if values:
                for value in values:
                    if isinstance(value, str):
                        present.add(value.casefold())
        tags[c.label_fields] = present
    if c.label_mode_all:
        return c.label_values <= present
    return not c.label_values.isdisjoint(present)


# The index is cached per (agreement set, registry) so callers can keep calling `decide` with
# the same objects and pay the compilation once.  Keys hold the objects themselves (identity
# compared) to rule out id() reuse after garbage collection.
_INDEX_CACHE: dict[tuple[int, ...], tuple[object, Registry, AgreementIndex]] = {}
_CACHE_LIMIT = 16


def index_for(agreements: AgreementSet | Sequence[Agreement], registry: Registry) -> AgreementIndex:
    """The compiled index for these agreements and registry, built on first use."""
    if isinstance(agreements, AgreementSet):
        key: tuple[int, ...] = (id(agreements), id(registry))
        source: object = agreements
    else:
        key = (id(registry), *map(id, agreements))
        source = tuple(agreements)
    cached = _INDEX_CACHE.get(key)
    if cached is not None and cached[1] is registry and _same_source(cached[0], source):
        return cached[2]
    index = AgreementIndex(agreements, registry)
    if len(_INDEX_CACHE) >= _CACHE_LIMIT:
        _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
    _INDEX_CACHE[key] = (source, registry, index)
    return index


def _same_source(cached: object, current: object) -> bool:
    if isinstance(current, tuple) and isinstance(cached, tuple):
        return len(cached) == len(current) and all(
            a is b for a, b in zip(cached, current, strict=True)
        )
    return cached is current


def decide(
    obj: NormalizedObject,
    publisher: Org,
    subscriber: Org,
    agreements: AgreementSet | Sequence[Agreement],
    now: datetime,
    registry: Registry,
    listed: Hits = NO_HITS,
) -> Decision:
    """Allow or deny delivering `obj` from `publisher` to `subscriber` at `now` (pure).

    For hot loops build `AgreementIndex(agreements, registry)` once and call its `decide`."""
    return index_for(agreements, registry).decide(obj, publisher, subscriber, now, listed)
