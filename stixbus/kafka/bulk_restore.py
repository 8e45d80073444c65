"""Cold table restore at C speed, before Faust starts.

Faust rebuilds a table from its changelog one event at a time through its consumer thread,
stream buffers and a per-event coroutine: about 1,500-3,500 records/s on this 2-core machine,
so a worker without local state and 1M dedup keys is unavailable for minutes (10M: hours).
`restore` does the same work first, with librdkafka (confluent-kafka) fetching every partition
of each table's changelog that is far behind (more than `min_records` records between the
local store's persisted offset and the changelog end) and writing the records into the
partition's local RocksDB store in large write batches, in the exact layout Faust reads
(stixbus/kafka/_compat.py: raw keys and values, tombstones as deletes, the last applied offset
under Faust's offset key).  Faust then finds its stores up to date and only replays what was
written since.  All partitions are restored, whichever this worker is assigned later (like a
standby replica of each); with several workers each does it for the whole table.

The partitions are restored in parallel, one process each (`processes` at a time, default all):
one process copies at ~20,000 records/s while using a quarter of a core (it waits on fetches and
RocksDB writes), and the per-record work in librdkafka's and rocksdict's bindings holds one GIL,
so processes, not threads (docs/performance.md, "Cold rebuild of the dedup table").  Each opens
its own consumer and its partition's store; the parent only plans (watermarks against the
persisted offsets) and waits.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stixbus.kafka import _compat
from stixbus.kafka.acls import WORKER
from stixbus.kafka.config import confluent_config
from stixbus.settings import Settings

log = logging.getLogger("stixbus.local_state")

BATCH = 10_000  # records per consume() call and per RocksDB write batch


@dataclass(frozen=True)
class Restored:
    partitions: int
    records: int
    seconds: float


@dataclass(frozen=True)
class _Gap:
    """One changelog partition to copy into its table partition's store."""

    table: str
    topic: str
    partition: int
    start: int | None  # None: from the beginning (no local state)
    end: int  # the changelog's end offset when planned


def restore(
    tables_dir: Path,
    changelogs: Mapping[str, str],
    settings: Settings,
    min_records: int,
    processes: int | None = None,
) -> Restored:
    """Bring every changelog partition more than `min_records` ahead of its local store up to
    the changelog's end (table name -> changelog topic in `changelogs`), `processes` partitions
    at a time (default: all at once; 1: in this process)."""
    config = _consumer_config(settings)
    started, cpu = time.monotonic(), time.process_time()
    gaps = _plan(tables_dir, changelogs, config, min_records)
    if not gaps:
        return Restored(0, 0, 0.0)
    log.warning(
        "restoring %d table partition(s) from their changelogs before starting "
        "(no or old local state): %s",
        len(gaps),
        ", ".join(f"{g.topic}[{g.partition}]" for g in gaps),
    )
    parallel = min(len(gaps), processes or len(gaps))
    if parallel <= 1:
        results = [_copy(config, tables_dir, gap) for gap in gaps]
    else:
        # spawn: the parent may hold librdkafka threads (and, in tests, an event loop)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(parallel, mp_context=context) as pool:
            results = list(pool.map(_copy, [config] * len(gaps), [tables_dir] * len(gaps), gaps))
    records = sum(r for r, _ in results)
    took = time.monotonic() - started
    cpu = time.process_time() - cpu + sum(c for _, c in results)
    log.warning(
        "restored %d changelog records into %d local table partition(s) in %.1f s (%.0f/s; "
        "%d process(es), %.1f CPU s, %.0f records per CPU s)",
        records,
        len(gaps),
        took,
        records / took if took else 0.0,
        parallel,
        cpu,
        records / cpu if cpu else 0.0,
    )
    return Restored(len(gaps), records, took)


def _consumer_config(settings: Settings) -> dict[str, Any]:
    return {
        **confluent_config(settings, WORKER),
        "group.id": settings.app_id,  # never joined nor committed (assign only)
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "max.partition.fetch.bytes": settings.max_record_bytes,
        "fetch.max.bytes": max(64 << 20, settings.max_record_bytes),
        "queued.max.messages.kbytes": 32 << 10,  # per partition: bounds the RSS while restoring
        "log_level": 4,
    }


def _plan(
    tables_dir: Path, changelogs: Mapping[str, str], config: dict[str, Any], min_records: int
) -> list[_Gap]:
    from confluent_kafka import Consumer, TopicPartition

    persisted, _ = _compat.faust_persisted_offsets(tables_dir)
    consumer = Consumer(config)
    gaps = []
    try:
        for table, topic in sorted(changelogs.items()):
            meta = consumer.list_topics(topic, timeout=15).topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            for partition in sorted(meta.partitions):
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=15
                )
                applied = persisted.get((table, partition))
                start = low if applied is None else max(low, applied + 1)
                if high - start > min_records:
                    gaps.append(
                        _Gap(table, topic, partition, None if applied is None else start, high)
                    )
    finally:
        consumer.close()
    return gaps


def _copy(config: dict[str, Any], tables_dir: Path, gap: _Gap) -> tuple[int, float]:
    """Copy one changelog partition into its store; (records, CPU seconds)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    cpu = time.process_time()
    consumer = Consumer(config)
    start = OFFSET_BEGINNING if gap.start is None else gap.start
    consumer.assign([TopicPartition(gap.topic, gap.partition, start)])
    store = _compat.FaustStoreWriter(tables_dir, gap.table, gap.partition)
    last, records, eof = gap.end - 1, 0, KafkaError._PARTITION_EOF
    try:
        while True:
            batch = consumer.consume(num_messages=BATCH, timeout=1.0)
            if not batch:
                continue
            done = batch[-1].offset() is not None and (batch[-1].offset() or 0) >= last
            if any(m.error() is not None for m in batch):  # EOF (the end) or a failure
                for message in batch:
                    error = message.error()
                    if error is not None and error.code() != eof:
                        raise RuntimeError(
                            f"changelog restore of {gap.topic}[{gap.partition}] failed: {error}"
                        )
                batch = [m for m in batch if m.error() is None]
                done = True
            records += store.apply_messages(batch)
            store.flush()
            if done:
                break
    finally:
        store.close()
        consumer.close()
    return records, time.process_time() - cpu
