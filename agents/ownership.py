"""claims → normalized: the ownership check, one table keyed (and partitioned) by STIX id.

A version of an id another org owns never reaches dedup and routing (stixbus/core/ownership.py
says why and what happens instead); the owner's conflicting rewrite of a version is
quarantined like dedup's, but across submissions and canonical keys.
"""

from __future__ import annotations

import faust

from schemas.envelope import NormalizedObject
from stixbus import metrics
from stixbus.context import BusContext
from stixbus.core.ownership import claim_step
from stixbus.kafka.topics import OWNERS_TABLE


def register(app: faust.App, ctx: BusContext) -> None:
    names, registry = ctx.names, ctx.registry
    normalized, deadletter = app.topic(names.normalized), app.topic(names.deadletter)
    receipts = {o.id: app.topic(names.receipts(o.id)) for o in registry.publishers}
    owners = app.Table(
        OWNERS_TABLE, partitions=ctx.settings.partitions, key_type=bytes, value_type=bytes,
        recovery_buffer_size=ctx.settings.recovery_buffer_records,
    )  # fmt: skip

    @app.agent(app.topic(names.claims), name="stixbus.ownership")
    async def ownership(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            record = NormalizedObject.model_validate_json(event.value)
            key = record.object_id.encode()
            step = claim_step(owners.get(key), record, registry)
            if step.forward:
                await normalized.send(key=record.key.encode(), value=event.value)
            if step.dead_letter is not None:
                await deadletter.send(key=key, value=step.dead_letter.model_dump_json().encode())
            if step.receipt is not None:
                await receipts[record.publisher].send(
                    key=record.submission_id.encode(), value=step.receipt.model_dump_json().encode()
                )
                metrics.observe_rejections(
                    record.publisher, [r.reason for r in step.receipt.rejections]
                )
            if step.foreign:
                metrics.observe_foreign_id(record.publisher)
            if step.update is not None:
                owners[key] = step.update.encode()
