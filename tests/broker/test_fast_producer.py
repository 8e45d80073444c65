"""The route/ownership agents' librdkafka producer on the real broker.

What the agents rely on (docs/dedup.md ordering): once `Batch.acked()` returns, every record of
the batch is in the log (readable by any consumer, so a kill -9 right after cannot lose it), and
a keyed record lands on the partition Faust/aiokafka would have chosen (co-partitioning).
"""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from stixbus.kafka.admin import ensure_topics
from stixbus.kafka.fast_producer import FastProducer
from stixbus.kafka.topics import TopicSpec
from stixbus.settings import Settings

PARTITIONS = 4
RECORDS = 500


def test_acked_batch_is_in_the_log_on_aiokafkas_partitions(bootstrap: str) -> None:
    topic = f"fastprod{uuid.uuid4().hex[:8]}"
    conn = {"bootstrap_servers": bootstrap}
    settings = Settings(bootstrap_servers=bootstrap)
    asyncio.run(ensure_topics(conn, [TopicSpec(topic, PARTITIONS)]))
    producer = FastProducer.from_settings(settings)
    keys = [f"indicator--{uuid.uuid4()}".encode() for _ in range(RECORDS)]

    async def go() -> dict[bytes, int]:
        consumer = AIOKafkaConsumer(**conn, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            before = await consumer.end_offsets(tps)
            batch = producer.batch()
            for n, key in enumerate(keys):
                await producer.send(batch, topic, key, b"v%d" % n)
            await batch.acked()
            # No flush, no wait: acknowledged means the broker's log end moved past them.
            after = await consumer.end_offsets(tps)
            assert sum(after[tp] - before[tp] for tp in tps) == RECORDS
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            placed: dict[bytes, int] = {}
            while len(placed) < RECORDS:
                for tp, messages in (await consumer.getmany(timeout_ms=2000)).items():
                    placed.update((m.key, tp.partition) for m in messages if m.key)
            return placed
        finally:
            await consumer.stop()

    try:
        placed = asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        assert producer.close() == 0
    partitioner = DefaultPartitioner()
    all_partitions = list(range(PARTITIONS))
    expected = {k: partitioner(k, all_partitions, all_partitions) for k in keys}
    assert placed == expected
    assert len(set(placed.values())) == PARTITIONS  # the keys did spread
