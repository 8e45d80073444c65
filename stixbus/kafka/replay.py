"""Follow a one-partition compacted topic from its start, without a consumer group.

Every worker reads every record of such a topic (agreements, markings): a group would split
them.  `follow` hands each batch to `apply` and sets `loaded` once the topic has been read up
to the end it had when the follower started, so callers can fail closed until then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stixbus.kafka.client import start_client

Records = list[tuple[bytes | None, bytes | None]]


async def follow(
    conn: dict[str, Any], topic: str, apply: Callable[[Records], None], loaded: asyncio.Event
) -> None:
    consumer = AIOKafkaConsumer(**conn, enable_auto_commit=False)
    partition = TopicPartition(topic, 0)
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
    finally:
        await consumer.stop()
