"""Topic names and shapes, derived from the prefix and the org registry.

Faust's `app.topic(pattern=...)` subscribes to nothing (open bug), so every per-org topic is
listed explicitly from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from schemas.org import Registry

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


def changelog_topic(app_id: str, table: str) -> str:
    """Faust's changelog topic name for `table` of app `app_id`."""
    return f"{app_id}-{table}-changelog"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False
    max_message_bytes: int | None = None


def topic_configs(spec: TopicSpec, min_insync_replicas: int | None = None) -> dict[str, str]:
    """The per-topic configs a spec implies: what `stixbus topics` creates and what
    `stixbus security k8s` writes into the KafkaTopic resources, so both deployments agree."""
    configs = {"cleanup.policy": "compact"} if spec.compacted else {}
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
    ) -> list[TopicSpec]:
        """Every topic the bus needs, with its partition count, cleanup policy and record size
        limit (None: the broker's default, about 1 MiB).

        `ingest_message_bytes` (the ingest limit, `Limits.message_bytes`) caps the ingest
        topics (plus `RECORD_FRAMING_BYTES` for key and headers), so the broker itself refuses
        a submission the worker would reject as too big; the other topics take
        `max_message_bytes` (they carry receipts and dead letters).  With `app_id`, also the
        worker's Faust table changelogs (co-partitioned with their stream, compacted)."""
        ingest_cap = (
            None if ingest_message_bytes is None else ingest_message_bytes + RECORD_FRAMING_BYTES
        )
        ingest = [
            TopicSpec(self.ingest(o.id), partitions, max_message_bytes=ingest_cap)
            for o in registry.publishers
        ]
        specs: list[TopicSpec] = []
        specs += [TopicSpec(self.receipts(o.id), 1) for o in registry.publishers]
        specs += [TopicSpec(self.deliver(o.id), partitions) for o in registry.subscribers]
        specs += [
            TopicSpec(self.claims, partitions),
            TopicSpec(self.normalized, partitions),
            TopicSpec(self.ticks, partitions),
            TopicSpec(self.deadletter, 1),
            TopicSpec(self.audit, partitions),
            # One partition: every worker reads every agreement (no GlobalTable, see agents/).
            TopicSpec(self.agreements, 1, compacted=True),
            TopicSpec(self.markings, 1, compacted=True),
            TopicSpec(self.feedback, partitions),
            TopicSpec(self.feedback_sources, partitions),
            TopicSpec(self.false_positives, 1, compacted=True),
        ]
        if app_id is not None:
            specs += [
                TopicSpec(changelog_topic(app_id, t), partitions, compacted=True)
                for t in WORKER_TABLES
            ]
        specs = [replace(s, max_message_bytes=max_message_bytes) for s in specs]
        if ingest_message_bytes is None:
            ingest = [replace(s, max_message_bytes=max_message_bytes) for s in ingest]
        return ingest + specs
