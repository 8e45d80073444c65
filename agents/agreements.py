"""Every worker follows the compacted agreements topic from the start, so edits apply live.

A plain aiokafka consumer with no group reads partition 0 of `stixbus.agreements`: every worker
sees every agreement.  (Faust's GlobalTable can loop forever in recovery with several workers.)
The records are folded in by stixbus/core/agreement_store.py.
"""

from __future__ import annotations

import asyncio

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from stixbus import metrics
from stixbus.context import BusContext
from stixbus.core.agreement_store import AgreementStore
from stixbus.kafka.config import client_kwargs


def register(app: faust.App, ctx: BusContext) -> tuple[AgreementStore, asyncio.Event]:
    """The store, and an event set once the topic has been replayed to its end (routing waits
    for it: fail closed)."""
    store, loaded = AgreementStore(ctx.registry), asyncio.Event()

    @app.task
    async def follow_agreements() -> None:
        consumer = AIOKafkaConsumer(**client_kwargs(ctx.settings), enable_auto_commit=False)
        partition = TopicPartition(ctx.names.agreements, 0)
        await consumer.start()
        try:
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            end = (await consumer.end_offsets([partition]))[partition]
            while True:
                batch = await consumer.getmany(partition, timeout_ms=500)
                records = [(m.key, m.value) for m in batch.get(partition, [])]
                for agreement_id, version in store.apply_batch(records).items():
                    if version is None:
                        metrics.retire_agreement(agreement_id)
                    else:
                        metrics.set_agreement_version(agreement_id, version)
                if not loaded.is_set() and await consumer.position(partition) >= end:
                    loaded.set()
        finally:
            await consumer.stop()

    return store, loaded
