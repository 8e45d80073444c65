"""Topic names and shapes, derived from the prefix and the org registry.

Faust's `app.topic(pattern=...)` subscribes to nothing (open bug), so every per-org topic is
listed explicitly from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from schemas.org import Registry


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False
    max_message_bytes: int | None = None


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

    def org_of_ingest(self, topic: str) -> str:
        head = f"{self.prefix}.ingest."
        if not topic.startswith(head):
            raise ValueError(f"{topic!r} is not an ingest topic (expected {head}<org>)")
        return topic[len(head) :]

    def all_specs(
        self, registry: Registry, partitions: int, max_message_bytes: int | None = None
    ) -> list[TopicSpec]:
        """Every topic the bus needs, with its partition count, cleanup policy and record size
        limit (None: the broker's default, about 1 MiB)."""
        specs = [TopicSpec(self.ingest(o.id), partitions) for o in registry.publishers]
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
        ]
        return [replace(s, max_message_bytes=max_message_bytes) for s in specs]
