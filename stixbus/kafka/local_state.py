"""Is the worker's local table state (RocksDB under <home>/worker) from the broker it talks to?

A worker keeps each table partition in a local store with the changelog offset it has applied.
When the broker's data is wiped (`deploy/kafka/kafka.sh reset`) or a changelog topic is deleted
and created again, that local state describes records the broker no longer has, and Faust stops
the worker with `ConsistencyError` (persisted offset higher than the topic's).  Worse, when the
new changelog has already grown past the old offset, Faust would silently skip its first
records.  So before the worker starts, `check` compares the local state with the broker:

- the changelog topics' ids (Kafka topic ids, new for every created topic), recorded next to
  the state in `state-origin.json` at each start;
- every partition's persisted offset with the end of its changelog partition.

On a mismatch the local state is deleted with one WARNING line that says why, and Faust
rebuilds it from the changelog (docs/runbook.md, "Reset broker / stale local state").
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stixbus.files import atomic_write
from stixbus.kafka import _compat
from stixbus.kafka.acls import WORKER
from stixbus.kafka.client import run_on_broker, start_client
from stixbus.kafka.config import client_kwargs, confluent_config
from stixbus.settings import Settings

log = logging.getLogger("stixbus.local_state")

ORIGIN_FILE = "state-origin.json"


@dataclass(frozen=True)
class Verdict:
    stale: bool
    reason: str = ""


def judge(
    persisted: Mapping[tuple[str, int], int],
    ends: Mapping[tuple[str, int], int],
    recorded_ids: Mapping[str, str],
    topic_ids: Mapping[str, str],
    broken: Mapping[str, str] | None = None,
) -> Verdict:
    """Pure: is local state with these persisted offsets ((topic, partition) -> last applied
    offset), recorded topic ids and unreadable stores (folder -> error) stale against the
    broker's end offsets and topic ids?"""
    for folder, error in sorted((broken or {}).items()):
        return Verdict(True, f"local store {folder} cannot be opened ({error})")
    for topic, recorded in sorted(recorded_ids.items()):
        current = topic_ids.get(topic)
        if current is not None and current != recorded:
            return Verdict(True, f"changelog topic {topic} was created again (topic id {current}, "
                           f"the local state was built from {recorded})")  # fmt: skip
    for (topic, partition), offset in sorted(persisted.items()):
        end = ends.get((topic, partition))
        if end is None:
            return Verdict(True, f"changelog {topic} has no partition {partition} on the broker")
        if offset >= end:
            return Verdict(True, f"{topic} partition {partition} was applied up to offset "
                           f"{offset}, but the broker's changelog ends at {end}")  # fmt: skip
    return Verdict(False)


async def _end_offsets(conn: dict[str, Any], topics: list[str]) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(**conn, enable_auto_commit=False)
    await start_client(consumer)
    try:
        await consumer._client.force_metadata_update()
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        ends = await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()
    return {(tp.topic, tp.partition): end for tp, end in ends.items()}


def _topic_ids(config: dict[str, Any], topics: list[str]) -> dict[str, str]:
    """Kafka topic ids (a new one for every created topic) of the topics that exist."""
    from confluent_kafka import KafkaException, TopicCollection
    from confluent_kafka.admin import AdminClient

    # Kept referenced until the futures are resolved; librdkafka notices (level 5+) stay quiet.
    admin = AdminClient({**config, "log_level": 4})
    futures = admin.describe_topics(TopicCollection(topics), request_timeout=15)
    ids: dict[str, str] = {}
    for name, future in futures.items():
        try:
            ids[name] = str(future.result().topic_id)
        except KafkaException:
            continue  # missing or not described: the offsets still decide
    del admin
    return ids


def check(tables_dir: Path, changelogs: Mapping[str, str], settings: Settings) -> Verdict:
    """Compare the local state in `tables_dir` (table name -> its changelog topic in
    `changelogs`) with the broker; delete it when stale (one WARNING line, then Faust rebuilds
    it), and record the changelog topic ids it is now built from."""
    offsets, broken = _compat.faust_persisted_offsets(tables_dir)
    persisted = {
        (changelogs[table], partition): offset
        for (table, partition), offset in offsets.items()
        if table in changelogs
    }
    topics = sorted(set(changelogs.values()))
    ends = run_on_broker(_end_offsets(client_kwargs(settings, WORKER), topics))
    topic_ids = _topic_ids(confluent_config(settings, WORKER), topics)
    verdict = judge(persisted, ends, _read_origin(tables_dir), topic_ids, broken)
    if verdict.stale:
        log.warning(
            "local table state in %s does not match the broker: %s (the broker was reset, the "
            "changelog topics were created again, or the store is damaged); deleting it and "
            "rebuilding every table from its changelog",
            tables_dir,
            verdict.reason,
        )
        shutil.rmtree(tables_dir, ignore_errors=True)
    if topic_ids:
        tables_dir.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(dict(sorted(topic_ids.items())), indent=2) + "\n"
        atomic_write(tables_dir / ORIGIN_FILE, payload.encode(), 0o600)
    return verdict


def _read_origin(tables_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((tables_dir / ORIGIN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}
