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
from stixbus.kafka import _compat
from stixbus.kafka.fast_producer import DeliveryFailed, FastProducer, Outputs
from stixbus.kafka.topics import OWNERS_TABLE


def register(app: faust.App, ctx: BusContext, fast: FastProducer | None = None) -> None:
    """`fast`: the worker's librdkafka producer for the outputs (None: Faust's producer)."""
    names, registry, settings = ctx.names, ctx.registry, ctx.settings
    normalized, deadletter = app.topic(names.normalized), app.topic(names.deadletter)
    receipts = {o.id: app.topic(names.receipts(o.id)) for o in registry.publishers}
    owners = app.Table(
        OWNERS_TABLE, partitions=settings.partitions, key_type=bytes, value_type=bytes,
        recovery_buffer_size=settings.recovery_buffer_records,
    )  # fmt: skip

    @app.agent(app.topic(names.claims), name="stixbus.ownership")
    async def ownership(stream: faust.StreamT[bytes]) -> None:
        # Batches like the route agent (take_events acks a batch's events after the body).
        batches = stream.take_events(  # type: ignore[attr-defined]
            settings.route_batch_max, within=settings.route_batch_seconds
        )
        async for events in batches:
            try:
                await _batch(events)
            except DeliveryFailed as exc:  # the owners table and offsets must not move on
                await app.crash(exc)
                raise

    async def _batch(events: list[faust.EventT]) -> None:
        """Claims in order (an id's later claim sees its earlier one's owner), every send, ONE
        wait for all acks, then one owners write per id: a forwarded version is on the
        broker before the owner record that accounts for it (a crash in between re-forwards
        it; route dedupes the replay)."""
        pending: dict[bytes, bytes] = {}
        writes: dict[bytes, faust.EventT] = {}
        out = Outputs(fast)
        for event in events:
            record = NormalizedObject.model_validate_json(event.value)
            key = record.object_id.encode()
            step = claim_step(pending.get(key) or owners.get(key), record, registry)
            if step.forward:
                await out.send(normalized, record.key.encode(), bytes(event.value))
            if step.dead_letter is not None:
                await out.send(deadletter, key, step.dead_letter.model_dump_json().encode())
            if step.receipt is not None:
                await out.send(
                    receipts[record.publisher],
                    record.submission_id.encode(),
                    step.receipt.model_dump_json().encode(),
                )
                metrics.observe_rejections(
                    record.publisher, [r.reason for r in step.receipt.rejections]
                )
            if step.foreign:
                metrics.observe_foreign_id(record.publisher)
            if step.update is not None:
                pending[key] = step.update.encode()
                writes[key] = event
        await out.acked()
        for key, event in writes.items():
            with _compat.as_current_event(event):
                owners[key] = pending[key]
