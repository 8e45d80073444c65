"""normalized + ticks → deliver.<org> + audit: de-duplicate per canonical key, then route.

One table keyed by the canonical key (co-partitioned with `normalized`) holds each key's
provenance and what every subscriber was last given
(stixbus/core/dedup.py, stixbus/core/deliveries.py).
Expiry ticks come from agents/expiry.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import faust
import orjson

from agents import expiry as expiry_timer
from schemas.envelope import NormalizedObject
from stixbus import metrics
from stixbus.context import BusContext
from stixbus.core.agreement_store import AgreementStore
from stixbus.core.dedup import (
    MergeOutcome,
    conflict_outcome,
    decode_state,
    encode_state,
    merge_source,
)
from stixbus.core.deliveries import Plan, RouteConfig, audit_records, plan_key
from stixbus.core.expiry import ExpiryIndex, is_collectable, state_deadline
from stixbus.kafka.topics import DEDUP_TABLE


def register(app: faust.App, ctx: BusContext, store: AgreementStore) -> None:
    names, registry, settings = ctx.names, ctx.registry, ctx.settings
    audit, deadletter = app.topic(names.audit), app.topic(names.deadletter)
    deliver = {o.id: app.topic(names.deliver(o.id)) for o in registry.subscribers}
    receipts = {o.id: app.topic(names.receipts(o.id)) for o in registry.publishers}
    table = app.Table(
        DEDUP_TABLE, partitions=settings.partitions, key_type=bytes, value_type=bytes
    )
    config = RouteConfig(settings.confidence_step)
    grace = settings.dedup_grace_seconds
    expiry = ExpiryIndex()
    expiry_timer.register(app, ctx, table, expiry)

    @app.agent(app.topic(names.normalized, names.ticks), name="stixbus.route")
    async def route(stream: faust.StreamT[bytes]) -> None:
        await store.loaded.wait()  # fail closed: never route before the agreements are known
        async for event in stream.events():
            key, now = bytes(event.key or b""), datetime.now(UTC)
            raw = table.get(key)
            state, record = (decode_state(raw) if raw else None), None
            if event.message.topic == names.ticks:
                if state is None:
                    continue
                plan = plan_key(state, None, registry, store.index, now, config)
            else:
                record = NormalizedObject.model_validate_json(event.value)
                state, outcome = merge_source(state, record, now)
                if outcome is MergeOutcome.CONFLICT:
                    await _quarantine(record)
                    continue
                if (
                    outcome is not MergeOutcome.NEW_SOURCE
                    and outcome is not MergeOutcome.NEW_VERSION
                ):
                    metrics.observe_suppressed()
                    if outcome is MergeOutcome.IDENTICAL:  # keep last_seen
                        table[key] = encode_state(state)
                        expiry.set(key, state_deadline(state, grace))
                    continue
                plan = plan_key(state, record.object_id, registry, store.index, now, config)
            await _write(plan, now, record)
            if is_collectable(plan.state, now, grace):
                table.pop(key, None)
                expiry.discard(key)
            else:
                table[key] = encode_state(plan.state)
                expiry.set(key, state_deadline(plan.state, grace))

    async def _write(plan: Plan, now: datetime, record: NormalizedObject | None) -> None:
        # The key's new state (its changelog record, written after this returns) must not reach
        # the broker before the deliveries it records, or a kill -9 in between would lose them:
        # wait for the acks.  The reverse only re-mints identical (id, modified) on replay,
        # which consumers drop (stixbus.kafka.client.VersionFilter).
        acks = []
        for delivery in plan.deliveries:
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
        for entry in audit_records(plan, now):
            await audit.send(key=entry["object_id"].encode(), value=orjson.dumps(entry))
            for reason in [] if entry["allow"] else entry["reasons"]:
                metrics.observe_denial(reason["code"])
        await asyncio.gather(*acks)
        if record is not None and any(d.revocation for d in plan.deliveries):
            metrics.observe_revocation_fanout(
                (datetime.now(UTC) - record.published_at).total_seconds()
            )

    async def _quarantine(record: NormalizedObject) -> None:
        receipt, letter = conflict_outcome(record)
        await deadletter.send(
            key=record.object_id.encode(), value=letter.model_dump_json().encode()
        )
        await receipts[record.publisher].send(
            key=record.submission_id.encode(), value=receipt.model_dump_json().encode()
        )
        metrics.observe_rejections(record.publisher, [r.reason.value for r in receipt.rejections])
