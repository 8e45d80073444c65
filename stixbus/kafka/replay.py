"""Follow a one-partition compacted topic from its start, without a consumer group.

Every worker reads every record of such a topic (agreements, markings): a group would split
them.  `follow` hands each batch to `apply` and sets `loaded` once the topic has been read up
to the end it had when the follower started, so callers can fail closed until then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stixbus.errors import NotFound
from stixbus.kafka.client import start_client

Records = list[tuple[bytes | None, bytes | None]]
log = logging.getLogger(__name__)


async def follow(
    conn: dict[str, Any], topic: str, apply: Callable[[Records], None], loaded: asyncio.Event
) -> None:
    consumer = AIOKafkaConsumer(**conn, enable_auto_commit=False)
    partition = TopicPartition(topic, 0)
    started = time.monotonic()
    await start_client(consumer)
    try:
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        while True:
            batch = await consumer.getmany(partition, timeout_ms=500)
            apply([(m.key, m.value) for m in batch.get(partition, [])])
            if not loaded.is_set() and await consumer.position(partition) >= end:
                loaded.set()
                # The stages waiting on this replay start here: say when (a stall shows).
                log.info("%s replayed up to offset %d in %.1fs", topic, end,
                         time.monotonic() - started)  # fmt: skip
    finally:
        await consumer.stop()


async def follow_all(
    conn: dict[str, Any],
    topic: str,
    apply: Callable[[Records], None],
    loaded: asyncio.Event,
    *,
    max_record_bytes: int = 16 * 1024 * 1024,
) -> None:
    """`follow` for a topic of any number of partitions (a subscriber's deliver.<org>, which
    is keyed by STIX id: the versions of one object stay in order within their partition).
    Raises NotFound when the topic does not exist."""
    consumer = AIOKafkaConsumer(
        **conn,
        enable_auto_commit=False,
        fetch_max_bytes=2 * max_record_bytes,
        max_partition_fetch_bytes=max_record_bytes,
    )
    await consumer.start()
    try:
        ids = consumer.partitions_for_topic(topic)
        if ids is None:
            await consumer._client.force_metadata_update()
            ids = consumer.partitions_for_topic(topic)
        if not ids:
            raise NotFound(
                f"topic {topic!r} does not exist", "run `stixbus topics` to create and list them"
            )
        partitions = [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        while True:
            batch = await consumer.getmany(*partitions, timeout_ms=500, max_records=5000)
            apply([(m.key, m.value) for messages in batch.values() for m in messages])
            if not loaded.is_set():
                positions = [await consumer.position(tp) for tp in partitions]
                if all(pos >= end[tp] for pos, tp in zip(positions, partitions, strict=True)):
                    loaded.set()
    finally:
        await consumer.stop()
