"""Every worker replays the compacted markings topic: each publisher's marking-definitions
(stixbus/core/marking_memory.py).  Ingest waits for the replay before normalising, so a
remembered marking is never reported unknown after a restart."""

from __future__ import annotations

import asyncio

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from stixbus.context import BusContext
from stixbus.core.marking_memory import MarkingMemory
from stixbus.kafka.config import client_kwargs


def register(app: faust.App, ctx: BusContext) -> tuple[MarkingMemory, asyncio.Event]:
    memory, loaded = MarkingMemory(), asyncio.Event()

    @app.task
    async def follow_markings() -> None:
        consumer = AIOKafkaConsumer(**client_kwargs(ctx.settings), enable_auto_commit=False)
        partition = TopicPartition(ctx.names.markings, 0)
        await consumer.start()
        try:
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            end = (await consumer.end_offsets([partition]))[partition]
            while True:
                batch = await consumer.getmany(partition, timeout_ms=500)
                memory.apply((m.key, m.value) for m in batch.get(partition, []))
                if not loaded.is_set() and await consumer.position(partition) >= end:
                    loaded.set()
        finally:
            await consumer.stop()

    return memory, loaded
