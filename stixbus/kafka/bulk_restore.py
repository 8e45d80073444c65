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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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


def restore(
    tables_dir: Path, changelogs: Mapping[str, str], settings: Settings, min_records: int
) -> Restored:
    """Bring every changelog partition more than `min_records` ahead of its local store up to
    the changelog's end (table name -> changelog topic in `changelogs`)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    persisted, _ = _compat.faust_persisted_offsets(tables_dir)
    config = {
        **confluent_config(settings, WORKER),
        "group.id": settings.app_id,  # never joined nor committed (assign only)
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "max.partition.fetch.bytes": settings.max_record_bytes,
        "fetch.max.bytes": max(64 << 20, settings.max_record_bytes),
        "queued.max.messages.kbytes": 32 << 10,  # per partition: bounds the RSS while restoring
        "log_level": 4,
    }
    consumer = Consumer(config)
    started, cpu = time.monotonic(), time.process_time()
    todo: dict[tuple[str, int], tuple[str, int]] = {}  # (topic, partition) -> (table, end)
    try:
        assign = []
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
                if high - start <= min_records:
                    continue
                todo[(topic, partition)] = (table, high)
                offset = OFFSET_BEGINNING if applied is None else start
                assign.append(TopicPartition(topic, partition, offset))
        if not todo:
            return Restored(0, 0, 0.0)
        log.warning(
            "restoring %d table partition(s) from their changelogs before starting "
            "(no or old local state): %s",
            len(todo),
            ", ".join(f"{t}[{p}]" for t, p in sorted(todo)),
        )
        consumer.assign(assign)
        records = _copy(consumer, tables_dir, todo, KafkaError._PARTITION_EOF)
    finally:
        consumer.close()
    took, cpu = time.monotonic() - started, time.process_time() - cpu
    log.warning(
        "restored %d changelog records into %d local table partition(s) in %.1f s (%.0f/s; "
        "%.1f CPU s, %.0f records per CPU s)",
        records,
        len(todo),
        took,
        records / took if took else 0.0,
        cpu,
        records / cpu if cpu else 0.0,
    )
    return Restored(len(todo), records, took)


def _copy(
    consumer: object,
    tables_dir: Path,
    todo: Mapping[tuple[str, int], tuple[str, int]],
    eof_code: int,
) -> int:
    from confluent_kafka import Consumer

    assert isinstance(consumer, Consumer)
    stores = {
        tp: _compat.FaustStoreWriter(tables_dir, table, tp[1]) for tp, (table, _) in todo.items()
    }
    pending = dict(todo)
    records = 0
    try:
        while pending:
            batch = consumer.consume(num_messages=BATCH, timeout=1.0)
            touched = set()
            for message in batch:
                topic, partition = message.topic(), message.partition()
                tp = (str(topic), int(partition or 0))
                error = message.error()
                if error is not None:
                    if error.code() == eof_code:
                        pending.pop(tp, None)
                        continue
                    raise RuntimeError(f"changelog restore of {tp[0]}[{tp[1]}] failed: {error}")
                store = stores.get(tp)
                if store is None:
                    continue
                offset = message.offset() or 0
                store.apply(message.key() or b"", message.value(), offset)
                touched.add(tp)
                records += 1
                if offset >= todo[tp][1] - 1:
                    pending.pop(tp, None)
            for tp in touched:
                stores[tp].flush()
    finally:
        for store in stores.values():
            store.close()
    return records
