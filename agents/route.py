"""normalized + ticks → deliver.<org> + audit: de-duplicate per canonical key, then route.

One table keyed by the canonical key (co-partitioned with `normalized`) holds each key's
provenance and what every subscriber was last given.  The branch logic is the pure
`stixbus.core.route_step.route_step` (merge: dedup.py, planning: deliveries.py, table encoding:
state_codec.py); this shell decodes, calls it, sends what it returns and writes the table.
Expiry ticks come from agents/expiry.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import faust
import orjson

from agents import expiry as expiry_timer
from agents.feedback import FalsePositiveCounts
from schemas.envelope import NormalizedObject
from stixbus import metrics
from stixbus.context import BusContext
from stixbus.core.agreement_store import AgreementStore
from stixbus.core.decay import DecayPolicy
from stixbus.core.deliveries import RouteConfig
from stixbus.core.expiry import ExpiryIndex
from stixbus.core.route_step import Quarantine, StepResult, TableWrite, Tick, route_step
from stixbus.core.state_codec import decode_state, encode_state
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
) -> None:
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
    expiry = ExpiryIndex()
    expiry_timer.register(app, ctx, table, expiry)

    @app.agent(app.topic(names.normalized, names.ticks), name="stixbus.route")
    async def route(stream: faust.StreamT[bytes]) -> None:
        await agreements_loaded.wait()  # fail closed: never route before the agreements are known
        await false_positives.loaded.wait()  # nor before the false-positive policy's counts
        async for event in stream.events():
            key, now = bytes(event.key or b""), datetime.now(UTC)
            raw = table.get(key)
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
                await _quarantine(record, step.quarantine)
            if step.suppressed:
                metrics.observe_suppressed()
            if step.deliveries or step.audit:
                await _write(step, now, record)
            if step.table is TableWrite.PUT and step.state is not None:
                table[key] = encode_state(step.state)
                expiry.set(key, step.deadline)
            elif step.table is TableWrite.DELETE:
                table.pop(key, None)
                expiry.discard(key)

    async def _write(step: StepResult, now: datetime, record: NormalizedObject | None) -> None:
        # The key's new state (its changelog record, written after this returns) must not reach
        # the broker before the deliveries it records, or a kill -9 in between would lose them:
        # wait for the acks.  The reverse only re-mints identical (id, modified) on replay,
        # which consumers drop (stixbus.kafka.client.VersionFilter).
        acks = []
        for delivery in step.deliveries:
            for obj in (*delivery.companions, delivery.stix_object):
                acks.append(
                    await deliver[delivery.subscriber].send(
                        key=obj["id"].encode(), value=orjson.dumps(obj)
                    )
                )
            latency = (
                (now - delivery.published_at).total_seconds() if delivery.published_at else None
            )
            metrics.observe_delivery(
                delivery.subscriber, delivery.agreement_id or "", latency, delivery.revocation
            )
            if delivery.decay is not None:
                metrics.observe_decayed(delivery.decay)
        for entry in step.audit:
            await audit.send(key=entry.object_id.encode(), value=entry.model_dump_json().encode())
            for reason in [] if entry.allow else entry.reasons:
                metrics.observe_denial(reason.code)
        await asyncio.gather(*acks)
        if record is not None and any(d.revocation for d in step.deliveries):
            metrics.observe_revocation_fanout(
                (datetime.now(UTC) - record.published_at).total_seconds()
            )

    async def _quarantine(record: NormalizedObject, quarantine: Quarantine) -> None:
        receipt, letter = quarantine.receipt, quarantine.dead_letter
        await deadletter.send(
            key=record.object_id.encode(), value=letter.model_dump_json().encode()
        )
        await receipts[record.publisher].send(
            key=record.submission_id.encode(), value=receipt.model_dump_json().encode()
        )
        metrics.observe_rejections(record.publisher, [r.reason.value for r in receipt.rejections])
