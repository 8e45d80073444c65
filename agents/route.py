"""normalized + ticks → deliver.<org> + audit: de-duplicate per canonical key, then route.

One table keyed by the canonical key (co-partitioned with `normalized`) holds each key's
provenance and what every subscriber was last given.  The branch logic is the pure
`stixbus.core.route_step.route_step` (merge: dedup.py, planning: deliveries.py, table encoding:
state_codec.py); this shell decodes, calls it, sends what it returns and writes the table.
Expiry ticks come from agents/expiry.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import faust
import orjson

from agents import expiry as expiry_timer
from agents.feedback import FalsePositiveCounts
from schemas.envelope import NormalizedObject
from stixbus import metrics
from stixbus.context import BusContext
from stixbus.core.agreement_store import AgreementStore
from stixbus.core.companions import CompanionMemory
from stixbus.core.decay import DecayPolicy
from stixbus.core.deliveries import RouteConfig
from stixbus.core.expiry import ExpiryIndex
from stixbus.core.route_step import Quarantine, StepResult, TableWrite, Tick, route_step
from stixbus.core.state_codec import decode_state, encode_state
from stixbus.kafka import _compat
from stixbus.kafka.fast_producer import DeliveryFailed, FastProducer, Outputs
from stixbus.kafka.topics import DEDUP_TABLE
from stixbus.warninglists import guard_index

TICK = Tick()
TICK_VALUE = b"tick"  # agents/expiry.py; other tick values are false-positive counts


def register(
    app: faust.App,
    ctx: BusContext,
    store: AgreementStore,
    agreements_loaded: asyncio.Event,
    false_positives: FalsePositiveCounts,
    fast: FastProducer | None = None,
) -> None:
    """`fast`: the worker's librdkafka producer for the outputs (None: Faust's producer)."""
    names, registry, settings = ctx.names, ctx.registry, ctx.settings
    audit, deadletter = app.topic(names.audit), app.topic(names.deadletter)
    deliver = {o.id: app.topic(names.deliver(o.id)) for o in registry.subscribers}
    receipts = {o.id: app.topic(names.receipts(o.id)) for o in registry.publishers}
    table = app.Table(
        DEDUP_TABLE, partitions=settings.partitions, key_type=bytes, value_type=bytes,
        recovery_buffer_size=settings.recovery_buffer_records,
    )  # fmt: skip
    config = RouteConfig(
        settings.confidence_step,
        guard=guard_index(registry, settings.guard_lists) if settings.guard_enabled else None,
        decay=DecayPolicy.from_seconds(settings.decay_lifetimes),
        # false_positives: the live replay of the false-positives topic (agents/feedback.py)
        false_positives=false_positives.counts,
    )
    grace = settings.dedup_grace_seconds
    expiry = ExpiryIndex(settings.expiry_horizon_seconds)
    expiry_timer.register(app, ctx, table, expiry)

    companions = CompanionMemory(settings.companion_refresh_seconds)

    @table.on_recover
    async def _recovered() -> None:
        companions.forget()

    @app.agent(app.topic(names.normalized, names.ticks), name="stixbus.route")
    async def route(stream: faust.StreamT[bytes]) -> None:
        await agreements_loaded.wait()  # fail closed: never route before the agreements are known
        await false_positives.loaded.wait()  # nor before the false-positive policy's counts
        # faust.Stream.take_events (public, missing from the StreamT protocol): acks the batch's
        # events only after this loop's body for the batch has run.
        batches = stream.take_events(  # type: ignore[attr-defined]
            settings.route_batch_max, within=settings.route_batch_seconds
        )
        async for events in batches:
            try:
                await _batch(events)
            except DeliveryFailed as exc:
                # A record the broker refused: the batch's state and offsets must not be
                # written.  Stop the worker (its events are replayed after the restart).
                await app.crash(exc)
                raise

    async def _batch(events: Sequence[faust.EventT]) -> None:
        """One batch of events: steps in order (a key's later event sees its earlier one's
        state), every send of the batch, ONE wait for all acks, then the table writes."""
        now = datetime.now(UTC)
        pending: dict[bytes, bytes | None] = {}  # key -> state this batch wrote (None: deleted)
        existed: dict[bytes, bool] = {}  # key -> in the table before this batch (the key count)
        writes: dict[bytes, tuple[faust.EventT, StepResult]] = {}
        out = Outputs(fast)
        for event in events:
            key = bytes(event.key or b"")
            if key in pending:
                raw = pending[key]
            else:
                raw = table.get(key)
                existed.setdefault(key, raw is not None)
            record = (
                None
                if event.message.topic == names.ticks
                else NormalizedObject.model_validate_json(event.value)
            )
            state = decode_state(raw) if raw else None
            if record is None and event.value != TICK_VALUE:
                false_positives.apply(bytes(event.value))  # a count change (agents/feedback.py)
            step = route_step(
                TICK if record is None else record,
                state, registry, store.index, now, config, grace,
            )  # fmt: skip
            if step.quarantine is not None and record is not None:
                await _quarantine(out, record, step.quarantine)
            if step.suppressed:
                metrics.observe_suppressed()
            if step.deliveries or step.audit_entry is not None:
                await _send(out, step, now, record)
            if step.table is TableWrite.PUT and step.state is not None:
                pending[key] = encode_state(step.state)
                writes[key] = (event, step)
            elif step.table is TableWrite.DELETE:
                pending[key] = None
                writes[key] = (event, step)
        # The keys' new states (their changelog records, written below) must not reach the
        # broker before the deliveries and audit records they account for, or a kill -9 in
        # between would lose them: wait for every ack of the batch first.  The reverse only
        # re-sends identical deliveries (same (id, modified): consumers drop them,
        # stixbus.kafka.client.VersionFilter) and audit records (same audit_id) on replay.
        await out.acked()  # raises DeliveryFailed if the broker refused any record
        for key, (event, step) in writes.items():
            with _compat.as_current_event(event):
                value = pending[key]
                if value is not None:
                    table[key] = value
                    expiry.set(key, step.deadline, created=not existed[key])
                else:
                    table.pop(key, None)
                    expiry.discard(key, existed=existed[key])

    async def _send(
        out: Outputs, step: StepResult, now: datetime, record: NormalizedObject | None
    ) -> None:
        """Send one step's deliveries and audit records (their acks are awaited per batch)."""
        clock = time.monotonic()
        for delivery in step.deliveries:
            topic = deliver[delivery.subscriber]
            for companion in delivery.companions:
                encoded = companions.due(delivery.subscriber, companion, clock)
                if encoded is not None:
                    await out.send(topic, companion["id"].encode(), encoded)
            obj = delivery.stix_object
            await out.send(topic, obj["id"].encode(), orjson.dumps(obj))
            latency = (
                (now - delivery.published_at).total_seconds() if delivery.published_at else None
            )
            metrics.observe_delivery(
                delivery.subscriber, delivery.agreement_id or "", latency, delivery.revocation
            )
            if delivery.decay is not None:
                metrics.observe_decayed(delivery.decay)
        entry = step.audit_entry
        if entry is not None:  # one record per step, every decision and delivery folded in
            value = entry.model_dump_json().encode()
            await out.send(audit, entry.key.encode(), value)
        for decision in step.audit:
            for reason in [] if decision.allow else decision.reasons:
                metrics.observe_denial(reason.code)
        if record is not None and any(d.revocation for d in step.deliveries):
            metrics.observe_revocation_fanout(
                (datetime.now(UTC) - record.published_at).total_seconds()
            )

    async def _quarantine(out: Outputs, record: NormalizedObject, quarantine: Quarantine) -> None:
        receipt, letter = quarantine.receipt, quarantine.dead_letter
        metrics.observe_rejections(record.publisher, [r.reason.value for r in receipt.rejections])
        await out.send(deadletter, record.object_id.encode(), letter.model_dump_json().encode())
        await out.send(
            receipts[record.publisher],
            record.submission_id.encode(),
            receipt.model_dump_json().encode(),
        )
