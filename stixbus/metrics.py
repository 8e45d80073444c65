"""The bus's own Prometheus metrics (prometheus-client, default registry).

Served on the worker's `/metrics` together with Faust's own sensor metrics (`faust_*`, see
`agents/observe.py`), because both live in `prometheus_client.REGISTRY`.

Naming follows the Prometheus conventions: a `stixbus_` prefix, the unit in the name
(`_seconds`, `_records`), `_total` on counters. Labels are bounded: org ids (`publisher`,
`subscriber`), agreement ids (`agreement`) and reason codes (`reason`, from
`schemas.envelope.Reason` for rejections and `stixbus.core.decision.ReasonCode` for denials).
A value outside those sets is recorded as `other` (reason) or `unknown` (org, once `init_orgs`
ran), so a hostile or buggy input cannot blow up the series count.

Agents call the `observe_*` / `set_*` functions below; they never touch the metric objects.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from schemas.envelope import Reason

# Seconds; from "fast path" (10 ms) to "a subscriber waited ten minutes".
LATENCY_BUCKETS_SECONDS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

OTHER_REASON = "other"
UNKNOWN_ORG = "unknown"

SUBMISSIONS = Counter(
    "stixbus_submissions_total",
    "Submissions (ingest records) received, per publisher",
    ["publisher"],
)
OBJECTS_RECEIVED = Counter(
    "stixbus_objects_received_total",
    "STIX objects received in submissions (accepted + rejected), per publisher",
    ["publisher"],
)
OBJECTS_REJECTED = Counter(
    "stixbus_objects_rejected_total",
    "Rejections at ingest, per publisher and reason (schemas.envelope.Reason)",
    ["publisher", "reason"],
)
LAST_SUBMISSION = Gauge(
    "stixbus_last_submission_timestamp_seconds",
    "Unix time of the last submission received from the publisher",
    ["publisher"],
)
OBJECTS_SUPPRESSED = Counter(
    "stixbus_objects_suppressed_total",
    "Objects the dedup stage suppressed (an equivalent version was already seen)",
)
FOREIGN_IDS = Counter(
    "stixbus_foreign_ids_total",
    "Versions of a STIX id another org (or the bus) owns, dropped by the ownership check",
    ["publisher"],
)
DELIVERIES = Counter(
    "stixbus_deliveries_total",
    "Objects produced to stixbus.deliver.<subscriber>, per subscriber and agreement",
    ["subscriber", "agreement"],
)
REVOCATIONS_DELIVERED = Counter(
    "stixbus_revocations_delivered_total",
    "Revocations (revoked: true) produced to stixbus.deliver.<subscriber>",
    ["subscriber"],
)
LAST_DELIVERY = Gauge(
    "stixbus_last_delivery_timestamp_seconds",
    "Unix time of the last object produced to the subscriber's delivery topic",
    ["subscriber"],
)
DENIALS = Counter(
    "stixbus_denials_total",
    "Routing decisions that denied delivery, per reason (stixbus.core.decision.ReasonCode)",
    ["reason"],
)
DELIVERY_LATENCY = Histogram(
    "stixbus_delivery_latency_seconds",
    "End-to-end latency: publish timestamp on the ingest record to produced on the delivery topic",
    buckets=LATENCY_BUCKETS_SECONDS,
)
REVOCATION_FANOUT = Histogram(
    "stixbus_revocation_fanout_seconds",
    "Publish timestamp of a revocation to the last subscriber's delivery produced",
    buckets=LATENCY_BUCKETS_SECONDS,
)
GUARD_HITS = Counter(
    "stixbus_guard_hits_total",
    "Accepted objects with an observable on a warninglist (the false-positive guard), per list",
    ["list"],
)
DECAYED = Counter(
    "stixbus_decayed_total",
    "Revocations sent because an indicator expired for the subscriber: its valid_until (the "
    "producer's or the bus default by observable type) or its agreement's max_age",
    ["cause"],
)
AGREEMENT_VERSION = Gauge(
    "stixbus_agreement_version",
    "Version of each sharing agreement currently in force in the router",
    ["agreement"],
)
DEDUP_KEYS = Gauge(
    "stixbus_dedup_keys",
    "Canonical dedup keys held in the dedup table (on this worker)",
)
EXPIRY_INDEX_KEYS = Gauge(
    "stixbus_expiry_index_keys",
    "Dedup keys held in the in-memory expiry index: those due within the expiry horizon "
    "(on this worker)",
)
SUBSCRIBER_LAG = Gauge(
    "stixbus_subscriber_lag_records",
    "Records on stixbus.deliver.<subscriber> not yet committed by the subscriber's consumer "
    "group (end offsets minus committed offsets), sampled from the broker",
    ["subscriber"],
)
LAG_SAMPLE_TIME = Gauge(
    "stixbus_subscriber_lag_sampled_timestamp_seconds",
    "Unix time of the last successful lag sample from the broker",
)
LAG_SAMPLE_ERRORS = Counter(
    "stixbus_subscriber_lag_sample_errors_total",
    "Lag samples that failed (broker unreachable, timeout)",
)
# The network sinks (egress/sinks/): what each subscriber's lists hold, and the safety limit.
SINK_ENTRIES = Gauge(
    "stixbus_sink_entries",
    "Entries in a published sink list, per subscriber, sink format and list",
    ["subscriber", "sink", "list"],
)
SINK_HELD = Gauge(
    "stixbus_sink_held",
    "1 while the safety limit holds back a sink's new render (the old one stays published)",
    ["subscriber", "sink"],
)
SINK_REFUSED = Counter(
    "stixbus_sink_refused_total",
    "Renders the safety limit refused (a list shrank or grew too much in one step)",
    ["subscriber", "sink"],
)
SINK_PUBLISHED = Gauge(
    "stixbus_sink_published_timestamp_seconds",
    "Unix time a sink last published a changed render, per subscriber and format",
    ["subscriber", "sink"],
)

FEEDBACK_REPORTS = Counter(
    "stixbus_feedback_reports_total",
    "Sighting and opinion reports from members about ids they name, per reporting subscriber "
    "and reason: the kind when accepted (sighting, false_positive, not_false_positive), "
    "not_delivered_to_you when rejected",
    ["subscriber", "reason"],
)
FALSE_POSITIVE_REPORTS = Counter(
    "stixbus_false_positive_reports_total",
    "Accepted false-positive reports, per publisher (producer) of the reported object",
    ["publisher"],
)
FEEDBACK_DELIVERED = Counter(
    "stixbus_feedback_delivered_total",
    "Aggregated sightings and false-positive opinions delivered to their producer (publisher)",
    ["publisher"],
)

# Every metric family this module registers (the dashboard test compares against these).
ALL_METRICS: tuple[Counter | Gauge | Histogram, ...] = (
    SUBMISSIONS,
    OBJECTS_RECEIVED,
    OBJECTS_REJECTED,
    LAST_SUBMISSION,
    OBJECTS_SUPPRESSED,
    FOREIGN_IDS,
    DELIVERIES,
    REVOCATIONS_DELIVERED,
    LAST_DELIVERY,
    DENIALS,
    DELIVERY_LATENCY,
    REVOCATION_FANOUT,
    GUARD_HITS,
    DECAYED,
    AGREEMENT_VERSION,
    DEDUP_KEYS,
    EXPIRY_INDEX_KEYS,
    FEEDBACK_REPORTS,
    FALSE_POSITIVE_REPORTS,
    FEEDBACK_DELIVERED,
    SUBSCRIBER_LAG,
    LAG_SAMPLE_TIME,
    LAG_SAMPLE_ERRORS,
    SINK_ENTRIES,
    SINK_HELD,
    SINK_REFUSED,
    SINK_PUBLISHED,
)

_REJECTION_REASONS = frozenset(r.value for r in Reason)
_denial_reasons: frozenset[str] | None = None
_known_orgs: frozenset[str] | None = None
_LABEL_SHAPE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


def _denials() -> frozenset[str] | None:
    """Denial reason codes from the decision module (imported lazily: it is heavy)."""
    global _denial_reasons
    if _denial_reasons is None:
        try:
            from stixbus.core.decision import ReasonCode

            _denial_reasons = frozenset(r.value for r in ReasonCode)
        except Exception:  # the decision module failing to import must not break metrics
            return None
    return _denial_reasons


def _org(org: str) -> str:
    if _known_orgs is not None and org not in _known_orgs:
        return UNKNOWN_ORG
    return org


def _reason(reason: str, allowed: frozenset[str] | None) -> str:
    value = str(getattr(reason, "value", reason))
    if allowed is not None:
        return value if value in allowed else OTHER_REASON
    return value if _LABEL_SHAPE.match(value) else OTHER_REASON


def metric_names() -> set[str]:
    """Sample names this module exposes (with `_total`, `_bucket`, `_sum`, `_count`...)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("stixbus_"):
            names.add(family.name)
            names.update(s.name for s in family.samples)
    for metric in ALL_METRICS:
        for family in metric.describe():
            names.add(family.name)
            if isinstance(metric, Counter):
                names.update({family.name + "_total", family.name + "_created"})
            elif isinstance(metric, Histogram):
                names.update(
                    family.name + suffix for suffix in ("_bucket", "_sum", "_count", "_created")
                )
    return names


def init_orgs(publishers: Iterable[str], subscribers: Iterable[str]) -> None:
    """Create every org's series at 0, so `increase(...) == 0` alerts work after a restart.

    Also fixes the set of org label values: anything else is recorded as `unknown`.
    """
    global _known_orgs
    pubs, subs = list(publishers), list(subscribers)
    _known_orgs = frozenset(pubs) | frozenset(subs) | {UNKNOWN_ORG}
    for org in pubs:
        SUBMISSIONS.labels(org)
        OBJECTS_RECEIVED.labels(org)
        FOREIGN_IDS.labels(org)
    for org in subs:
        REVOCATIONS_DELIVERED.labels(org)
    for org in pubs:
        FALSE_POSITIVE_REPORTS.labels(org)


# Label children, looked up once: `labels()` validates and locks on every call, and the route
# agent calls it several times per delivered object (issue 13's profile: 3 % of the worker).
# Label values are bounded (orgs, agreement ids, reason codes); the cap only guards mistakes.
_CHILDREN: dict[tuple[object, tuple[str, ...]], Any] = {}
_CHILDREN_MAX = 10_000


def _child(metric: Any, *labels: str) -> Any:
    key = (metric, labels)
    child = _CHILDREN.get(key)
    if child is None:
        if len(_CHILDREN) >= _CHILDREN_MAX:
            _CHILDREN.clear()
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def observe_submission(publisher: str, objects: int) -> None:
    """One submission from `publisher` holding `objects` objects (accepted + rejected)."""
    org = _org(publisher)
    _child(SUBMISSIONS, org).inc()
    if objects > 0:
        _child(OBJECTS_RECEIVED, org).inc(objects)
    _child(LAST_SUBMISSION, org).set(time.time())


def observe_rejections(publisher: str, reasons: Iterable[str]) -> None:
    """One rejection per item of `reasons` (values of `schemas.envelope.Reason`)."""
    org = _org(publisher)
    for reason in reasons:
        _child(OBJECTS_REJECTED, org, _reason(reason, _REJECTION_REASONS)).inc()


def observe_foreign_id(publisher: str) -> None:
    FOREIGN_IDS.labels(_org(publisher)).inc()


def observe_suppressed(count: int = 1) -> None:
    """`count` objects suppressed by dedup."""
    if count > 0:
        OBJECTS_SUPPRESSED.inc(count)


def observe_delivery(
    subscriber: str,
    agreement_id: str,
    latency_seconds: float | None,
    revocation: bool = False,
) -> None:
    """One object produced to `stixbus.deliver.<subscriber>` under `agreement_id`.

    `latency_seconds`: publish timestamp of the ingest record → now (None when unknown).
    """
    org = _org(subscriber)
    _child(DELIVERIES, org, agreement_id).inc()
    _child(LAST_DELIVERY, org).set(time.time())
    if revocation:
        REVOCATIONS_DELIVERED.labels(org).inc()
    if latency_seconds is not None and latency_seconds >= 0:
        DELIVERY_LATENCY.observe(latency_seconds)


def observe_denial(reason: str) -> None:
    """One (object, subscriber) pair denied, with the decision's reason code
    (`warninglist:<list>` counts as `warninglist`; per list see `observe_guard_hits`)."""
    _child(DENIALS, _reason(str(reason).partition(":")[0], _denials())).inc()


_GUARD_LIST_SHAPE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,78}[a-z0-9]$")


def observe_guard_hits(lists: Iterable[str]) -> None:
    """One accepted object version whose observables are on these warninglists."""
    for name in set(lists):
        _child(GUARD_HITS, name if _GUARD_LIST_SHAPE.match(name) else OTHER_REASON).inc()


def observe_decayed(cause: str) -> None:
    """A revocation sent because the indicator expired (`valid_until` or `max_age`)."""
    _child(DECAYED, cause).inc()


def observe_revocation_fanout(latency_seconds: float) -> None:
    """A revocation reached every subscriber it must reach, `latency_seconds` after publish."""
    if latency_seconds >= 0:
        REVOCATION_FANOUT.observe(latency_seconds)


def set_agreement_version(agreement_id: str, version: int) -> None:
    AGREEMENT_VERSION.labels(agreement_id).set(version)


def retire_agreement(agreement_id: str) -> None:
    """The agreement is no longer in force: drop its version series."""
    try:
        AGREEMENT_VERSION.remove(agreement_id)
    except KeyError:
        pass


_REPORT_KINDS = frozenset({"sighting", "false_positive", "not_false_positive"})
REPORT_REJECTED = Reason.NOT_DELIVERED_TO_YOU.value


def observe_feedback_report(reporter: str, kind: str, accepted: bool) -> None:
    """One report (sighting or opinion about one id) from `reporter`, accepted or rejected."""
    label = kind if kind in _REPORT_KINDS else OTHER_REASON
    FEEDBACK_REPORTS.labels(_org(reporter), label if accepted else REPORT_REJECTED).inc()


def observe_false_positive(producer: str) -> None:
    """An accepted false-positive report about an object of `producer`."""
    FALSE_POSITIVE_REPORTS.labels(_org(producer)).inc()


def observe_feedback_delivered(producer: str, objects: int) -> None:
    """`objects` new versions of aggregated sightings/opinions delivered to `producer`."""
    if objects > 0:
        FEEDBACK_DELIVERED.labels(_org(producer)).inc(objects)


def set_dedup_keys(count: int, indexed: int) -> None:
    """`count` keys in the local dedup table, `indexed` of them in the expiry index."""
    DEDUP_KEYS.set(count)
    EXPIRY_INDEX_KEYS.set(indexed)


def set_subscriber_lag(subscriber: str, lag: int) -> None:
    SUBSCRIBER_LAG.labels(_org(subscriber)).set(max(lag, 0))


def set_sink_entries(subscriber: str, sink: str, counts: dict[str, int]) -> None:
    """A sink published: its entry count per list, and the time."""
    org = _org(subscriber)
    for name, count in counts.items():
        SINK_ENTRIES.labels(org, sink, name).set(count)
    SINK_PUBLISHED.labels(org, sink).set(time.time())


def set_sink_held(subscriber: str, sink: str, held: bool, refused: bool = False) -> None:
    """The safety limit holds a render back (`held`), newly (`refused`), or let it out."""
    org = _org(subscriber)
    SINK_HELD.labels(org, sink).set(1 if held else 0)
    if refused:
        SINK_REFUSED.labels(org, sink).inc()


# -- reading a /metrics scrape back (`stixbus status`, tests) --
Labels = tuple[tuple[str, str], ...]


@dataclass
class Snapshot:
    """Samples of one /metrics scrape: name → {sorted label pairs: value}."""

    at: float
    samples: dict[str, dict[Labels, float]] = field(default_factory=dict)

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        """Sum of `name` grouped by `label`, over samples whose labels match `match`."""
        sums: dict[str, float] = defaultdict(float)
        for labels, value in self.samples.get(name, {}).items():
            d = dict(labels)
            if all(d.get(k) == v for k, v in match.items()) and label in d:
                sums[d[label]] += value
        return dict(sums)

    def value(self, name: str) -> float | None:
        series = self.samples.get(name)
        return sum(series.values()) if series else None


def parse_metrics(text: str, at: float | None = None) -> Snapshot:
    """One Prometheus text exposition (a /metrics body) as a Snapshot taken `at`."""
    snap = Snapshot(at=time.monotonic() if at is None else at)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            snap.samples.setdefault(sample.name, {})[labels] = sample.value
    return snap
