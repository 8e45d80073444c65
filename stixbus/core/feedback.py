"""Sightings and false-positive reports back to producers (pure; docs/feedback.md).

Three steps, each keyed so that one Faust table partition holds what it needs:

1. `reports_of` (normalise shell, agents/ingest.py): a subscriber's accepted `sighting` or
   `opinion` becomes one `FeedbackReport` per id it names; it never reaches other subscribers.
2. `DeliveredIndex` (key = the delivered id, agents/feedback.py): who received that id and which
   producers' objects stand behind it, from the audit (`stixbus.core.audit.delivery_facts`).
   `accept_report` maps a report to one `Contribution` per producer object, or rejects it with
   a receipt that is the same whether the id exists, was delivered to someone else, or not.
3. `SourceFeedback` per producer object, grouped by dedup key (`contribute`, `flush`): the
   aggregated sighting and false-positive opinion the producer gets on its deliver topic, made by
   the bus identity, naming reporters only under attributed agreements, at most one new version
   per source per coalescing window; and the key's count of distinct false-positive reporters,
   which the route stage reads (stixbus/core/fp_policy.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from schemas.agreement import Attribution
from schemas.envelope import NormalizedObject, Reason, Receipt, Rejection
from schemas.feedback import Contribution, DeliveryFact, FeedbackReport, ReportKind
from schemas.org import Registry
from schemas.tlp import TLP
from stixbus.core.ids import parse_time, stix_time, uuid5
from stixbus.core.redact import BUS_OBJECTS_CREATED, bus_identity

FEEDBACK_TYPES = frozenset({"sighting", "opinion"})
_SIGHTING, _FP, _NOT_FP = (k.value for k in ReportKind)
_ATTRIBUTED = Attribution.ATTRIBUTED.value
FALSE_POSITIVE_OPINIONS = frozenset({"strongly-disagree", "disagree"})
# An opinion naming more ids than this is feedback about the first ones only.
MAX_REFS_PER_OPINION = 32
MAX_COUNT = 999_999_999  # STIX 2.1 sighting count upper bound
# Reports kept apart per reporter and producer object (a SIEM that sends a new sighting per hit
# must not grow the state without bound); older sightings are folded into one entry.
MAX_REPORTS_PER_REPORTER = 64
FOLDED = "folded"
# What the producer's aggregate is marked: member reports, shared with the producer only.
FEEDBACK_TLP = TLP.AMBER

# One wording whatever the reason (unknown id, delivered to another org, revoked...): the
# receipt must not tell a member whether an id exists.
NOT_DELIVERED_MESSAGE = (
    "the referenced id is not an object the bus delivered to you: report sightings and false "
    "positives only about ids you received on your deliver topic"
)


# --- 1. reports ---------------------------------------------------------------------------


def is_feedback(record: NormalizedObject, submitted: frozenset[str] = frozenset()) -> bool:
    """A sighting or opinion about ids received from the bus; one about objects of the same
    submission (`submitted`: their ids) is the publisher's own intel, routed like any object."""
    if record.object_type not in FEEDBACK_TYPES:
        return False
    obj = record.object
    named = (
        [obj.get("sighting_of_ref")] if record.object_type == "sighting" else obj.get("object_refs")
    )
    refs = [r for r in named or [] if isinstance(r, str)]
    return not refs or not all(r in submitted for r in refs)


def split_feedback(
    accepted: list[NormalizedObject],
) -> tuple[list[NormalizedObject], list[FeedbackReport]]:
    """A submission's accepted objects: those routed as intel, and the feedback reports."""
    submitted = frozenset(r.object_id for r in accepted)
    intel: list[NormalizedObject] = []
    reports: list[FeedbackReport] = []
    for record in accepted:
        if is_feedback(record, submitted):
            reports += reports_of(record)
        else:
            intel.append(record)
    return intel, reports


def reports_of(record: NormalizedObject) -> list[FeedbackReport]:
    """The reports a subscriber's accepted sighting or opinion makes (none for other types)."""
    obj = record.object
    modified = record.modified or str(obj.get("created", ""))
    common: dict[str, Any] = {
        "submission_id": record.submission_id,
        "reporter": record.publisher,
        "received_at": record.received_at,
        "report_id": record.object_id,
        "modified": modified,
    }
    revoked = bool(obj.get("revoked", False))
    if record.object_type == "sighting":
        target = obj.get("sighting_of_ref")
        if not isinstance(target, str):
            return []
        count = obj.get("count", 1)
        count = min(max(count, 0), MAX_COUNT) if isinstance(count, int) else 1
        first, last = obj.get("first_seen"), obj.get("last_seen")
        first = first if isinstance(first, str) else modified
        last = last if isinstance(last, str) else first
        return [
            FeedbackReport(
                **common,
                kind=ReportKind.SIGHTING,
                target_id=target,
                pointer="/sighting_of_ref",
                count=0 if revoked else count,
                first_seen=first,
                last_seen=last,
            )
        ]
    if record.object_type == "opinion":
        refs = obj.get("object_refs")
        value = obj.get("opinion")
        fp = value in FALSE_POSITIVE_OPINIONS and not revoked
        kind = ReportKind.FALSE_POSITIVE if fp else ReportKind.NOT_FALSE_POSITIVE
        seen: list[str] = []
        for ref in refs if isinstance(refs, list) else []:
            if isinstance(ref, str) and ref not in seen:
                seen.append(ref)
        return [
            FeedbackReport(**common, kind=kind, target_id=ref, pointer=f"/object_refs/{n}")
            for n, ref in enumerate(seen[:MAX_REFS_PER_OPINION])
        ]
    return []


# --- 2. the delivered-id index --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveredIndex:
    """One delivered id: the latest delivery fact per recipient org."""

    recipients: dict[str, DeliveryFact] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps({k: v.model_dump(mode="json") for k, v in self.recipients.items()})

    @staticmethod
    def decode(raw: bytes | None) -> DeliveredIndex:
        if not raw:
            return DeliveredIndex()
        data = orjson.loads(raw)
        return DeliveredIndex({k: DeliveryFact.model_validate(v) for k, v in data.items()})


def apply_delivery(index: DeliveredIndex, fact: DeliveryFact) -> DeliveredIndex | None:
    """The index after `fact`; None when it changes nothing (an older or equal fact)."""
    held = index.recipients.get(fact.subscriber)
    if held is not None and (
        held.decided_at > fact.decided_at
        or held.model_copy(update={"decided_at": fact.decided_at}) == fact
    ):
        return None  # older, or the same apart from its time: no table write (hot path)
    return DeliveredIndex({**index.recipients, fact.subscriber: fact})


def apply_deliveries(index: DeliveredIndex, facts: Iterable[DeliveryFact]) -> DeliveredIndex | None:
    """The index after `facts`, in order (one table write for all); None when none changes it."""
    changed: DeliveredIndex | None = None
    for fact in facts:
        updated = apply_delivery(index if changed is None else changed, fact)
        if updated is not None:
            changed = updated
    return changed


def deliveries_by_id(facts: Iterable[DeliveryFact]) -> dict[str, list[DeliveryFact]]:
    """`facts` grouped by delivered id (the table key), each group in the given order."""
    groups: dict[str, list[DeliveryFact]] = {}
    for fact in facts:
        groups.setdefault(fact.delivered_id, []).append(fact)
    return groups


# The index's batched records (`batch_deliveries`) stay below this size (a larger fact alone).
INDEX_RECORD_BYTES = 256 * 1024
_DELIVERIES_HEAD, _DELIVERIES_TAIL = b'{"deliveries":[', b"]}"


@dataclass(frozen=True, slots=True)
class IndexRecord:
    """One record for the `feedback` topic: a `FeedbackEvent` with `deliveries`."""

    partition: int
    key: bytes  # the first fact's delivered id (which maps to `partition` too)
    value: bytes
    facts: int


def batch_deliveries(
    facts: Iterable[DeliveryFact],
    partition_of: Callable[[bytes], int],
    max_bytes: int = INDEX_RECORD_BYTES,
) -> list[IndexRecord]:
    """The index stage's records for `facts`: one per partition of the `feedback` topic, not one
    per fact.  `partition_of(delivered id)` must be the partitioner the reports are sent with
    (murmur2, as Faust's producer), because the `stixbus-feedback` table stores a key in the
    partition of the event that wrote it, where the reports about that id arrive.  Facts keep
    their order within a partition; a record holding more than `max_bytes` of facts is split."""
    parts: dict[int, list[tuple[bytes, list[bytes]]]] = {}
    sizes: dict[int, int] = {}
    for fact in facts:
        key = fact.delivered_id.encode()
        encoded = DeliveryFact.__pydantic_serializer__.to_json(fact)
        partition = partition_of(key)
        chunks = parts.setdefault(partition, [])
        if not chunks or sizes[partition] + len(encoded) + 1 > max_bytes:
            chunks.append((key, []))
            sizes[partition] = len(_DELIVERIES_HEAD) + len(_DELIVERIES_TAIL)
        chunks[-1][1].append(encoded)
        sizes[partition] += len(encoded) + 1
    return [
        IndexRecord(
            partition, key, _DELIVERIES_HEAD + b",".join(encoded) + _DELIVERIES_TAIL, len(encoded)
        )
        for partition, chunks in parts.items()
        for key, encoded in chunks
    ]


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    contributions: list[Contribution]
    rejection: Receipt | None


def accept_report(index: DeliveredIndex, report: FeedbackReport) -> ReportOutcome:
    """One contribution per producer object behind the id, if the reporter received it."""
    fact = index.recipients.get(report.reporter)
    sources = [s for s in fact.sources if s.publisher != report.reporter] if fact else []
    if fact is None or not sources:
        return ReportOutcome([], rejection_receipt(report))
    return ReportOutcome(
        [
            Contribution(
                dedup_key=fact.dedup_key,
                source=source,
                reporter=report.reporter,
                attribution=fact.attribution,
                agreement_id=fact.agreement_id,
                report=report,
            )
            for source in sources
        ],
        None,
    )


def rejection_receipt(report: FeedbackReport) -> Receipt:
    """The receipt update for a report about an id the reporter was not delivered.

    Built from the report alone, so it cannot depend on what the bus knows about the id."""
    return Receipt(
        submission_id=report.submission_id,
        publisher=report.reporter,
        received_at=report.received_at,
        accepted=0,
        rejected=1,
        rejections=[
            Rejection(
                object_id=report.report_id,
                reason=Reason.NOT_DELIVERED_TO_YOU,
                pointer=report.pointer,
                message=NOT_DELIVERED_MESSAGE,
            )
        ],
    )


# --- 3. aggregation per producer object -----------------------------------------------------


@dataclass(slots=True)
class Entry:
    """One reporter's report (one sighting or opinion id) about one producer object."""

    reporter: str
    attribution: str | None
    modified: str
    kind: str
    count: int = 0
    first_seen: str | None = None
    last_seen: str | None = None


@dataclass(slots=True)
class Emitted:
    created: str
    modified: str
    body: dict[str, Any]  # the object without created/modified, for change detection


@dataclass(slots=True)
class SourceFeedback:
    publisher: str
    entries: dict[str, Entry] = field(default_factory=dict)  # "<reporter> <report id>"
    stamp: str = ""  # newest report receive time (STIX timestamp)
    sighting: Emitted | None = None
    opinion: Emitted | None = None
    last_emit: str | None = None  # wall time of the last emission
    pending: bool = False


@dataclass(slots=True)
class KeyFeedback:
    """Everything fed back about one dedup key (the aggregate table's value)."""

    sources: dict[str, SourceFeedback] = field(default_factory=dict)
    fp_published: int = 0  # the count last written to the false-positives topic

    def encode(self) -> bytes:
        """JSON; entries as positional lists (the bulk of the state: kept small and fast)."""
        return orjson.dumps(
            {
                "sources": {
                    sid: {
                        "publisher": s.publisher,
                        "entries": {
                            k: [e.reporter, e.attribution, e.modified, e.kind, e.count,
                                e.first_seen, e.last_seen]
                            for k, e in s.entries.items()
                        },
                        "stamp": s.stamp,
                        "sighting": s.sighting,
                        "opinion": s.opinion,
                        "last_emit": s.last_emit,
                        "pending": s.pending,
                    }
                    for sid, s in self.sources.items()
                },
                "fp_published": self.fp_published,
            }
        )  # fmt: skip

    @staticmethod
    def decode(raw: bytes | None) -> KeyFeedback:
        if not raw:
            return KeyFeedback()
        data = orjson.loads(raw)
        sources = {}
        for sid, s in data["sources"].items():
            sources[sid] = SourceFeedback(
                publisher=s["publisher"],
                entries={k: Entry(*e) for k, e in s["entries"].items()},
                stamp=s["stamp"],
                sighting=Emitted(**s["sighting"]) if s["sighting"] else None,
                opinion=Emitted(**s["opinion"]) if s["opinion"] else None,
                last_emit=s["last_emit"],
                pending=s["pending"],
            )
        return KeyFeedback(sources, data["fp_published"])

    def false_positive_reporters(self) -> int:
        return len(
            {e.reporter for s in self.sources.values() for e in s.entries.values() if e.kind == _FP}
        )


@dataclass(frozen=True, slots=True)
class Output:
    """Objects for the producer's deliver topic (companions first)."""

    producer: str
    objects: list[dict[str, Any]]
    sightings: int  # aggregated sightings among them (metrics)
    opinions: int


@dataclass(frozen=True, slots=True)
class AggregateStep:
    state: KeyFeedback
    outputs: list[Output]
    false_positives: int | None  # the key's new FP reporter count, when it changed
    due: datetime | None  # when a flush is needed for pending sources


def contribute(
    state: KeyFeedback, contribution: Contribution, registry: Registry, now: datetime,
    window_seconds: float,
) -> AggregateStep:  # fmt: skip
    """Record one contribution; emit what changed unless the window holds it back."""
    report = contribution.report
    source = state.sources.get(contribution.source.object_id)
    if source is None:
        source = state.sources[contribution.source.object_id] = SourceFeedback(
            contribution.source.publisher
        )
    slot = f"{contribution.reporter} {report.report_id}"
    held = source.entries.get(slot)
    if held is not None and held.modified >= report.modified:
        return AggregateStep(state, [], None, due_at(state, window_seconds))  # stale or replayed
    source.entries[slot] = Entry(
        reporter=contribution.reporter,
        attribution=contribution.attribution.value if contribution.attribution else None,
        modified=report.modified,
        kind=report.kind.value,
        count=report.count,
        first_seen=report.first_seen,
        last_seen=report.last_seen,
    )
    _bound(source, contribution.reporter)
    source.stamp = max(source.stamp, stix_time(report.received_at))
    source.pending = True
    return _emit(state, registry, now, window_seconds)


def _bound(source: SourceFeedback, reporter: str) -> None:
    """At most MAX_REPORTS_PER_REPORTER entries per reporter and object: older sightings are
    folded into one entry (their counts summed), older opinions dropped (the newest decide)."""
    mine = sorted(
        (e.modified, slot) for slot, e in source.entries.items() if e.reporter == reporter
    )
    if len(mine) <= MAX_REPORTS_PER_REPORTER:
        return
    folded_slot = f"{reporter} {FOLDED}"
    for _, slot in mine[: len(mine) - MAX_REPORTS_PER_REPORTER]:
        if slot == folded_slot:
            continue
        old = source.entries.pop(slot)
        if old.kind != ReportKind.SIGHTING.value:
            continue
        into = source.entries.get(folded_slot)
        if into is None:
            source.entries[folded_slot] = Entry(
                reporter, old.attribution, old.modified, old.kind, old.count, old.first_seen,
                old.last_seen,
            )  # fmt: skip
            continue
        into.count = min(into.count + old.count, MAX_COUNT)
        into.first_seen = min(filter(None, (into.first_seen, old.first_seen)), default=None)
        into.last_seen = max(filter(None, (into.last_seen, old.last_seen)), default=None)
        into.modified = max(into.modified, old.modified)


def flush(
    state: KeyFeedback, registry: Registry, now: datetime, window_seconds: float
) -> AggregateStep:
    """Emit what the window held back, if it is over."""
    return _emit(state, registry, now, window_seconds)


def _emit(
    state: KeyFeedback, registry: Registry, now: datetime, window_seconds: float
) -> AggregateStep:
    outputs: list[Output] = []
    window = timedelta(seconds=window_seconds)
    for source_id, source in sorted(state.sources.items()):
        if not source.pending:
            continue
        if source.last_emit is not None and now - parse_time(source.last_emit) < window:
            continue  # coalesced: the flush after the window sends it
        source.pending = False
        objects: list[dict[str, Any]] = []
        sighting_body = _sighting_body(source_id, source, registry)
        opinion_body = _opinion_body(source_id, source, registry)
        counts = [0, 0]
        for n, (body, attr) in enumerate(((sighting_body, "sighting"), (opinion_body, "opinion"))):
            held: Emitted | None = getattr(source, attr)
            if body is None or (held is not None and held.body == body):
                continue
            stamp = source.stamp
            if held is not None and stamp <= held.modified:
                stamp = stix_time(parse_time(held.modified) + timedelta(milliseconds=1))
            emitted = Emitted(held.created if held else stamp, stamp, body)
            setattr(source, attr, emitted)
            objects.append(_stix(emitted))
            counts[n] += 1
        if objects:
            source.last_emit = stix_time(now)
            companions = [bus_identity(registry), *_named_identities(source, registry)]
            outputs.append(Output(source.publisher, companions + objects, counts[0], counts[1]))
    fp = state.false_positive_reporters()
    changed = None
    if fp != state.fp_published:
        state.fp_published = changed = fp
    return AggregateStep(state, outputs, changed, due_at(state, window_seconds))


def due_at(state: KeyFeedback, window_seconds: float) -> datetime | None:
    """When the window of the earliest source with held-back changes is over (None: none)."""
    dues = [
        parse_time(s.last_emit) + timedelta(seconds=window_seconds)
        for s in state.sources.values()
        if s.pending and s.last_emit is not None
    ]
    return min(dues) if dues else None


# --- the worker's memory around the tables ----------------------------------------------------
# The flush timer runs at least this often (and at most every `feedback_window_seconds`).
MAX_FLUSH_INTERVAL_SECONDS = 5.0
MIN_FLUSH_INTERVAL_SECONDS = 0.2
# Deliveries the index stage remembers having forwarded (cleared when full).
INDEXED_MEMORY = 100_000


def flush_interval(window_seconds: float) -> float:
    """How often the flush timer looks for keys whose coalescing window is over."""
    return min(max(window_seconds / 2, MIN_FLUSH_INTERVAL_SECONDS), MAX_FLUSH_INTERVAL_SECONDS)


@dataclass
class ForwardedDeliveries:
    """The last delivery the index stage forwarded per (delivered id, recipient), in a bounded
    memory: a new version of one it already forwarded changes nothing downstream
    (`apply_delivery` ignores the time), so it need not be sent again.  Only the last one
    counts: an agreement changed back and forth must reach the index again."""

    limit: int = INDEXED_MEMORY
    _last: dict[tuple[str, str], tuple[object, ...]] = field(default_factory=dict)

    def is_new(self, fact: DeliveryFact) -> bool:
        """Whether `fact` should be forwarded (and, if so, remember it as the last one)."""
        pair = (fact.delivered_id, fact.subscriber)
        terms = (fact.agreement_id, fact.attribution,
                 tuple((s.publisher, s.object_id) for s in fact.sources))  # fmt: skip
        if self._last.get(pair) == terms:
            return False
        if len(self._last) >= self.limit:
            self._last.clear()
        self._last[pair] = terms
        return True


@dataclass
class FlushSchedule:
    """Keys with coalesced changes → when to flush them.  `stale` (after start and each
    rebalance) asks for a rebuild from the local aggregates table before the next look."""

    due: dict[bytes, datetime] = field(default_factory=dict)
    stale: bool = True

    def set(self, key: bytes, when: datetime | None) -> None:
        if when is None:
            self.due.pop(key, None)
        else:
            self.due[key] = when

    def rebuild(self, aggregates: Iterable[tuple[bytes, bytes]], window_seconds: float) -> None:
        self.stale = False
        self.due.clear()
        for key, raw in aggregates:
            self.set(key, due_at(KeyFeedback.decode(raw), window_seconds))

    def take_due(self, now: datetime) -> Iterator[bytes]:
        """The keys due by `now`, each forgotten as it is taken (the aggregator sets it again
        if something is still held back)."""
        for key in [k for k, when in self.due.items() if when <= now]:
            self.due.pop(key, None)
            yield key


def _stix(emitted: Emitted) -> dict[str, Any]:
    head = {k: emitted.body[k] for k in ("type", "spec_version", "id")}
    return {**head, "created": emitted.created, "modified": emitted.modified, **emitted.body}


def _named(source: SourceFeedback, kinds: set[str]) -> list[str]:
    """Reporters shown by name: only those whose agreement attributes (sorted org ids)."""
    return sorted(
        {
            e.reporter
            for e in source.entries.values()
            if e.kind in kinds and e.attribution == _ATTRIBUTED
        }
    )


def _reporters(source: SourceFeedback, kinds: set[str]) -> list[str]:
    return sorted({e.reporter for e in source.entries.values() if e.kind in kinds})


def _sectors(reporters: list[str], registry: Registry) -> list[str]:
    sectors = set()
    for org_id in reporters:
        org = registry.by_id.get(org_id)
        if org is not None:
            sectors.add(str(org.sector))
    return sorted(sectors)


def _common(kind: str, source_id: str, registry: Registry) -> dict[str, Any]:
    return {
        "type": kind,
        "spec_version": "2.1",
        "id": f"{kind}--{uuid5(registry.bus.namespace, f'stixbus|feedback|{kind}|{source_id}')}",
        "created_by_ref": registry.bus.identity_id,
        "object_marking_refs": [FEEDBACK_TLP.marking_id],
    }


def _sighting_body(
    source_id: str, source: SourceFeedback, registry: Registry
) -> dict[str, Any] | None:
    kinds = {_SIGHTING}
    entries = [e for e in source.entries.values() if e.kind in kinds]
    if not entries:
        return None
    reporters = _reporters(source, kinds)
    firsts = [e.first_seen for e in entries if e.first_seen]
    lasts = [e.last_seen for e in entries if e.last_seen]
    body = _common("sighting", source_id, registry)
    body["sighting_of_ref"] = source_id
    body["count"] = min(sum(e.count for e in entries), MAX_COUNT)
    if firsts and lasts:
        first, last = min(firsts), max(lasts)
        body["first_seen"], body["last_seen"] = first, max(first, last)
    named = _named(source, kinds)
    if named:
        body["where_sighted_refs"] = [registry.get(o).identity_id for o in named]
    body["x_stixbus_reporting_orgs"] = len(reporters)
    body["x_stixbus_sectors"] = _sectors(reporters, registry)
    return body


def _opinion_body(
    source_id: str, source: SourceFeedback, registry: Registry
) -> dict[str, Any] | None:
    kinds = {_FP, _NOT_FP}
    if not any(e.kind in kinds for e in source.entries.values()):
        return None
    fp_kinds = {_FP}
    reporters = _reporters(source, fp_kinds)
    body = _common("opinion", source_id, registry)
    body["opinion"] = "strongly-disagree" if reporters else "neutral"
    body["object_refs"] = [source_id]
    body["explanation"] = (
        f"{len(reporters)} member organisation(s) currently report this object as a false "
        "positive (aggregated by the bus)"
    )
    named = _named(source, fp_kinds)
    if named:
        body["authors"] = [registry.get(o).name for o in named]
    body["x_stixbus_false_positive_reports"] = len(reporters)
    body["x_stixbus_sectors"] = _sectors(reporters, registry)
    return body


def _named_identities(source: SourceFeedback, registry: Registry) -> list[dict[str, Any]]:
    """The identities an aggregated sighting's where_sighted_refs point at."""
    return [
        {
            "type": "identity",
            "spec_version": "2.1",
            "id": registry.get(o).identity_id,
            "created": BUS_OBJECTS_CREATED,
            "modified": BUS_OBJECTS_CREATED,
            "name": registry.get(o).name,
            "identity_class": "organization",
        }
        for o in _named(source, {_SIGHTING})
    ]
