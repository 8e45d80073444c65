"""Where lost submissions stopped: each stage topic's records that mention them, the group's
committed offsets, and the commit history of their partitions read from `__consumer_offsets`.

Used by the chaos tests' failure messages (docs/runbook.md, "Known issue ..."): a record that
sits below a partition's committed offset and has no trace in the next stage was skipped by
the stage that owns the partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from stixbus.kafka.admin import admin_client
from stixbus.kafka.client import Record, read_topic

OFFSETS_TOPIC = "__consumer_offsets"


@dataclass(frozen=True)
class Commit:
    topic: str
    partition: int
    offset: int
    commit_ms: int
    log_offset: int  # where the commit sits in __consumer_offsets (its order)


def _string(data: bytes, at: int) -> tuple[str, int]:
    (size,) = struct.unpack_from(">h", data, at)
    at += 2
    return data[at : at + size].decode(), at + size


def decode_commit(key: bytes, value: bytes | None, log_offset: int) -> tuple[str, Commit] | None:
    """An offset-commit record of `__consumer_offsets` (key versions 0/1, value versions 0-3),
    as (group, commit); None for group metadata records and tombstones."""
    (key_version,) = struct.unpack_from(">h", key, 0)
    if key_version not in (0, 1) or value is None:
        return None
    group, at = _string(key, 2)
    topic, at = _string(key, at)
    (partition,) = struct.unpack_from(">i", key, at)
    (value_version,) = struct.unpack_from(">h", value, 0)
    (offset,) = struct.unpack_from(">q", value, 2)
    at = 10 + (4 if value_version >= 3 else 0)  # v3 adds the leader epoch
    if value_version >= 4:  # flexible: compact string (unsigned varint length + 1)
        size, shift = 0, 0
        while True:
            byte = value[at]
            at += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        at += max(size - 1, 0)
    else:
        _, at = _string(value, at)
    (commit_ms,) = struct.unpack_from(">q", value, at)
    return group, Commit(topic, partition, offset, commit_ms, log_offset)


async def commit_history(bootstrap: str, group: str, topics: set[str]) -> list[Commit]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(OFFSETS_TOPIC) or set()
        tps = [TopicPartition(OFFSETS_TOPIC, p) for p in parts]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Commit] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch:
                break
            for messages in batch.values():
                for m in messages:
                    if m.key is None:
                        continue
                    decoded = decode_commit(m.key, m.value, m.offset)
                    if decoded and decoded[0] == group and decoded[1].topic in topics:
                        out.append(decoded[1])
        return sorted(out, key=lambda c: (c.topic, c.partition, c.commit_ms, c.log_offset))
    finally:
        # aiokafka 0.14's group-less consumer re-raises its own task's cancellation on stop
        with contextlib.suppress(asyncio.CancelledError):
            await consumer.stop()


async def committed(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    admin = admin_client({"bootstrap_servers": bootstrap})
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}
    finally:
        await admin.close()


async def _read(bootstrap: str, topic: str) -> list[Record]:
    conn = {"bootstrap_servers": bootstrap}
    return [r async for r in read_topic(conn, topic, from_beginning=True, max_wait=10)]


def _matches(record: Record, needle: bytes) -> bool:
    if needle.startswith(b"key="):
        return record.key == needle[4:]
    return needle in record.value


async def _trace(bootstrap: str, group: str, topics: list[str], needles: list[bytes]) -> str:
    lines: list[str] = []
    touched: set[tuple[str, int]] = set()
    for topic in topics:
        records = await _read(bootstrap, topic)
        for needle in needles:
            hits = [r for r in records if _matches(r, needle)]
            where = ", ".join(f"p{r.partition}@{r.offset} t={r.timestamp_ms}" for r in hits)
            lines.append(f"  {needle.decode()} in {topic}: {where or '-'}")
            touched.update((r.topic, r.partition) for r in hits)
    now = await committed(bootstrap, group)
    lines.append("committed now: " + ", ".join(f"{t}/{p}={now.get((t, p))}" for t, p in touched))
    history = await commit_history(bootstrap, group, {t for t, _ in touched})
    for topic, partition in sorted(touched):
        seq = [c for c in history if (c.topic, c.partition) == (topic, partition)]
        steps = " ".join(f"{c.offset}@{c.commit_ms % 100_000}" for c in seq)
        lines.append(f"commits {topic}/{partition}: {steps or '-'}")
    return "\n".join(lines)


def trace(bootstrap: str, group: str, topics: Iterable[str], needles: Iterable[bytes]) -> str:
    """A report on where each needle (a byte string in the records' values, or `key=<bytes>`
    for an exact key) appears
    per topic, the group's committed offsets and the commit history of those partitions."""
    try:
        return asyncio.run(_trace(bootstrap, group, list(topics), list(needles)))
    except Exception as exc:  # a diagnosis must never hide the failure it explains
        return f"stage trace failed: {exc!r}"
