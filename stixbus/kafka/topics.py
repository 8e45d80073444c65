"""Topic names and shapes, derived from the prefix and the org registry.

Faust's `app.topic(pattern=...)` subscribes to nothing (open bug), so every per-org topic is
listed explicitly from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from schemas.org import Registry
from stixbus.settings import Retention

# Room for what a record carries besides its payload (key = submission id, the submission
# header, the record batch header), so a payload of exactly the ingest limit still fits.
RECORD_FRAMING_BYTES = 1024

# The worker's Faust tables (agents/route.py).  Faust keeps each in a changelog topic named
# `<app_id>-<table>-changelog`; the worker may not create topics (docs/security.md), so the
# operator's `stixbus topics` / `stixbus up` creates these with the rest.
DEDUP_TABLE = "stixbus-dedup"
OWNERS_TABLE = "stixbus-owners"
# The feedback stages (agents/feedback.py): delivered id -> recipients and sources, and dedup
# key -> what members fed back about its producers' objects.
FEEDBACK_TABLE = "stixbus-feedback"
FEEDBACK_SOURCES_TABLE = "stixbus-feedback-sources"
WORKER_TABLES = (DEDUP_TABLE, OWNERS_TABLE, FEEDBACK_TABLE, FEEDBACK_SOURCES_TABLE)


# One partition per delivery topic: its offsets are then one total order, which is the order
# of `date_added` in the TAXII server (egress/taxii/) and what its `next` tokens point into.
DELIVER_PARTITIONS = 1


def changelog_topic(app_id: str, table: str) -> str:
    """Faust's changelog topic name for `table` of app `app_id`."""
    return f"{app_id}-{table}-changelog"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False
    max_message_bytes: int | None = None
    # Other topic configs (retention.ms, message.timestamp.type...), as (name, value) pairs.
    configs: tuple[tuple[str, str], ...] = ()


def _ms(seconds: float) -> str:
    return str(int(seconds * 1000))


def retention_configs(
    retention: Retention, kind: str, *, compacted: bool = False
) -> tuple[tuple[str, str], ...]:
    """Topic configs of one kind of topic (docs/operations.md, "Retention").

    Delete-policy topics get `retention.ms` from their setting; compacted topics keep the
    latest record of every key for ever, and `delete.retention.ms` bounds how long a tombstone
    stays readable.  The delivery topics also stamp records with the broker's append time
    (the TAXII server's `date_added`: monotonic per partition, never the producer's clock)."""
    out: dict[str, str] = {}
    if compacted:
        out["delete.retention.ms"] = _ms(retention.compacted_delete_retention_seconds)
        if retention.compacted_min_lag_seconds:
            out["min.compaction.lag.ms"] = _ms(retention.compacted_min_lag_seconds)
        if retention.compaction_dirty_ratio is not None:
            out["min.cleanable.dirty.ratio"] = str(retention.compaction_dirty_ratio)
    else:
        out["retention.ms"] = _ms(getattr(retention, f"{kind}_seconds"))
    if kind == "deliver":
        out["message.timestamp.type"] = "LogAppendTime"
    if retention.segment_seconds is not None:
        out["segment.ms"] = _ms(retention.segment_seconds)
    return tuple(sorted(out.items()))


def topic_configs(spec: TopicSpec, min_insync_replicas: int | None = None) -> dict[str, str]:
    """The per-topic configs a spec implies: what `stixbus topics` creates and what
    `stixbus security k8s` writes into the KafkaTopic resources, so both deployments agree."""
    configs = {"cleanup.policy": "compact" if spec.compacted else "delete"}
    configs.update(spec.configs)
    if spec.max_message_bytes is not None:
        configs["max.message.bytes"] = str(spec.max_message_bytes)
    if min_insync_replicas is not None:
        configs["min.insync.replicas"] = str(min_insync_replicas)
    return configs


@dataclass(frozen=True)
class TopicNames:
    prefix: str = "stixbus"

    def ingest(self, org_id: str) -> str:
        return f"{self.prefix}.ingest.{org_id}"

    def deliver(self, org_id: str) -> str:
        return f"{self.prefix}.deliver.{org_id}"

    def receipts(self, org_id: str) -> str:
        return f"{self.prefix}.receipts.{org_id}"

    @property
    def normalized(self) -> str:
        return f"{self.prefix}.normalized"

    @property
    def claims(self) -> str:
        """Accepted objects keyed by STIX id, for the ownership check (agents/ownership.py)."""
        return f"{self.prefix}.claims"

    @property
    def ticks(self) -> str:
        return f"{self.prefix}.ticks"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    @property
    def audit(self) -> str:
        return f"{self.prefix}.audit"

    @property
    def markings(self) -> str:
        """Accepted marking-definitions per publisher (compacted; core/marking_memory.py)."""
        return f"{self.prefix}.markings"

    @property
    def agreements(self) -> str:
        return f"{self.prefix}.agreements"

    @property
    def feedback(self) -> str:
        """Deliveries (from the audit) and members' reports, keyed by the delivered id."""
        return f"{self.prefix}.feedback"

    @property
    def feedback_sources(self) -> str:
        """Accepted reports per producer object, keyed by dedup key (agents/feedback.py)."""
        return f"{self.prefix}.feedback-sources"

    @property
    def false_positives(self) -> str:
        """Distinct false-positive reporters per dedup key (compacted; core/fp_policy.py)."""
        return f"{self.prefix}.false-positives"

    def org_of_ingest(self, topic: str) -> str:
        head = f"{self.prefix}.ingest."
        if not topic.startswith(head):
            raise ValueError(f"{topic!r} is not an ingest topic (expected {head}<org>)")
        return topic[len(head) :]

    def all_specs(
        self,
        registry: Registry,
        partitions: int,
        max_message_bytes: int | None = None,
        ingest_message_bytes: int | None = None,
        *,
        app_id: str | None = None,
        retention: Retention | None = None,
    ) -> list[TopicSpec]:
        """Every topic the bus needs, with its partition count, cleanup policy and record size
        limit (None: the broker's default, about 1 MiB).

        `ingest_message_bytes` (the ingest limit, `Limits.message_bytes`) caps the ingest
        topics (plus `RECORD_FRAMING_BYTES` for key and headers), so the broker itself refuses
        a submission the worker would reject as too big; the other topics take
        `max_message_bytes` (they carry receipts and dead letters).  With `app_id`, also the
        worker's Faust table changelogs (co-partitioned with their stream, compacted).
        `retention` (default: the STIXBUS_RETENTION_* settings) sets each topic's retention;
        the delivery topics are compacted by STIX id (a subscriber's durable current state)."""
        keep = retention if retention is not None else Retention()

        def conf(kind: str, compacted: bool = False) -> tuple[tuple[str, str], ...]:
            return retention_configs(keep, kind, compacted=compacted)

        ingest_cap = (
            None if ingest_message_bytes is None else ingest_message_bytes + RECORD_FRAMING_BYTES
        )
        ingest = [
            TopicSpec(
                self.ingest(o.id), partitions, max_message_bytes=ingest_cap, configs=conf("ingest")
            )
            for o in registry.publishers
        ]
        compact = conf("compacted", compacted=True)
        specs: list[TopicSpec] = []
        specs += [
            TopicSpec(self.receipts(o.id), 1, configs=conf("receipts"))
            for o in registry.publishers
        ]
        specs += [
            TopicSpec(
                self.deliver(o.id),
                DELIVER_PARTITIONS,
                compacted=True,
                configs=conf("deliver", compacted=True),
            )
            for o in registry.subscribers
        ]
        specs += [
            TopicSpec(self.claims, partitions, configs=conf("pipeline")),
            TopicSpec(self.normalized, partitions, configs=conf("pipeline")),
            TopicSpec(self.ticks, partitions, configs=conf("pipeline")),
            TopicSpec(self.deadletter, 1, configs=conf("deadletter")),
            TopicSpec(self.audit, partitions, configs=conf("audit")),
            # One partition: every worker reads every agreement (no GlobalTable, see agents/).
            TopicSpec(self.agreements, 1, compacted=True, configs=compact),
            TopicSpec(self.markings, 1, compacted=True, configs=compact),
            TopicSpec(self.feedback, partitions, configs=conf("pipeline")),
            TopicSpec(self.feedback_sources, partitions, configs=conf("pipeline")),
            TopicSpec(self.false_positives, 1, compacted=True, configs=compact),
        ]
        if app_id is not None:
            specs += [
                TopicSpec(changelog_topic(app_id, t), partitions, compacted=True, configs=compact)
                for t in WORKER_TABLES
            ]
        specs = [replace(s, max_message_bytes=max_message_bytes) for s in specs]
        if ingest_message_bytes is None:
            ingest = [replace(s, max_message_bytes=max_message_bytes) for s in ingest]
        return ingest + specs
