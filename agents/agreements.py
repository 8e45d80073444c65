"""Every worker follows the compacted agreements topic from the start, so edits apply live.

A plain aiokafka consumer with no group reads partition 0 of `stixbus.agreements`: every worker
sees every agreement.  (Faust's GlobalTable can loop forever in recovery with several workers.)
Key = agreement id, value = the agreement as JSON, an empty value (tombstone) retires it.
"""

from __future__ import annotations

import asyncio
import logging

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from schemas.agreement import Agreement
from schemas.org import Registry
from stixbus import metrics
from stixbus.context import BusContext
from stixbus.decide import AgreementIndex
from stixbus.kafka_config import client_kwargs

log = logging.getLogger(__name__)


class AgreementStore:
    """The agreements in force on this worker and their compiled index."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.agreements: dict[str, Agreement] = {}
        self.index = AgreementIndex((), registry)
        self.loaded = asyncio.Event()

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one record of the agreements topic; a bad record is logged and skipped."""
        agreement_id = (key or b"").decode("utf-8", "replace")
        if not value:
            if self.agreements.pop(agreement_id, None) is not None:
                metrics.retire_agreement(agreement_id)
                log.warning("agreement %s retired", agreement_id)
        else:
            try:
                agreement = Agreement.model_validate_json(value)
            except ValidationError as exc:
                log.error("agreements topic: record %r is not a valid agreement: %s", key, exc)
                return
            if agreement.id != agreement_id:
                # Compaction and tombstones work per key: a record keyed otherwise could never
                # be retired by `stixbus agreements retire <id>`.
                log.error(
                    "agreements topic: record keyed %r holds agreement %r; skipped (the key must "
                    "be the agreement id)",
                    agreement_id,
                    agreement.id,
                )
                return
            previous = self.agreements.get(agreement.id)
            if previous is not None and agreement.version < previous.version:
                log.warning(
                    "agreement %s goes back from version %d to %d (rollback?)",
                    agreement.id,
                    previous.version,
                    agreement.version,
                )
            self.agreements[agreement.id] = agreement
            metrics.set_agreement_version(agreement.id, agreement.version)
            log.warning("agreement %s version %d in force", agreement.id, agreement.version)
        self.index = AgreementIndex(tuple(self.agreements.values()), self.registry)


def register(app: faust.App, ctx: BusContext) -> AgreementStore:
    store = AgreementStore(ctx.registry)

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
                for message in batch.get(partition, []):
                    store.apply(message.key, message.value)
                if not store.loaded.is_set() and await consumer.position(partition) >= end:
                    store.loaded.set()
        finally:
            await consumer.stop()

    return store
