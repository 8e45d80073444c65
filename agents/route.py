"""normalized + ticks → deliver.<org> + audit: de-duplicate per canonical key, then route.

One table keyed by the canonical key (co-partitioned with `normalized`) holds each key's
provenance and what every subscriber was last given.  Keys whose sources expire need a tick
through `ticks`, because a Faust table may only be changed while processing an event of its
partition: an in-memory expiry index (deadline, key), updated on every table write and rebuilt
from the local table after each rebalance, tells the timer which keys are due without scanning
the table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
import orjson

from agents.agreements import AgreementStore
from schemas.envelope import NormalizedObject, Reason, Receipt, Rejection
from stixbus import metrics
from stixbus.context import BusContext
from stixbus.dedup import MergeOutcome, deadline_header, decode_state, encode_state, merge_source
from stixbus.deliveries import Plan, RouteConfig, plan_key
from stixbus.expiry import (
    ExpiryIndex,
    due_for_tick,
    is_collectable,
    next_deadline,
    state_deadline,
)

# A tick that was sent but whose key was not rewritten (lost in a rebalance, say) is retried
# after this many scan intervals.
TICK_RETRY_INTERVALS = 12
# Keys of the local table read per batch while rebuilding the expiry index (the event loop
# runs in between).
REBUILD_BATCH = 5000


def register(app: faust.App, ctx: BusContext, store: AgreementStore) -> None:
    names, registry, settings = ctx.names, ctx.registry, ctx.settings
    source = app.topic(names.normalized, names.ticks)
    ticks = app.topic(names.ticks)
    audit = app.topic(names.audit)
    deadletter = app.topic(names.deadletter)
    deliver = {o.id: app.topic(names.deliver(o.id)) for o in registry.subscribers}
    receipts = {o.id: app.topic(names.receipts(o.id)) for o in registry.publishers}
    table = app.Table(
        "stixbus-dedup", partitions=settings.partitions, key_type=bytes, value_type=bytes
    )
    config = RouteConfig(confidence_step=settings.confidence_step)
    grace = settings.dedup_grace_seconds
    expiry = ExpiryIndex()

    @table.on_recover
    async def _recovered() -> None:
        # After every rebalance the set of local partitions may have changed: rebuild the
        # expiry index from the table (lazily, on the timer's next run).
        expiry.stale = True

    @app.agent(source, name="stixbus.route")
    async def route(stream: faust.StreamT[bytes]) -> None:
        await store.loaded.wait()  # fail closed means: never route before agreements are known
        async for event in stream.events():
            key, now = bytes(event.key or b""), datetime.now(UTC)
            raw = table.get(key)
            state = decode_state(raw) if raw else None
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
                if outcome is MergeOutcome.IDENTICAL:
                    metrics.observe_suppressed()
                    table[key] = encode_state(state)  # last_seen only
                    expiry.set(key, state_deadline(state, grace))
                    continue
                if outcome not in (MergeOutcome.NEW_SOURCE, MergeOutcome.NEW_VERSION):
                    metrics.observe_suppressed()
                    continue
                plan = plan_key(state, record.object_id, registry, store.index, now, config)
            await _write(plan, now)
            if is_collectable(plan.state, now, grace):
                table.pop(key, None)
                expiry.discard(key)
            else:
                table[key] = encode_state(plan.state)
                expiry.set(key, state_deadline(plan.state, grace))

    async def _write(plan: Plan, now: datetime) -> None:
        # Crash safety: the key's new state (the changelog record, written by the caller after
        # this returns) must never reach the broker before the deliveries it records, or a
        # kill -9 in between would lose them for good.  So wait for the broker's acks here.
        # The reverse (deliveries acked, state lost) only re-mints the same (id, modified) on
        # replay, which consumers drop (stixbus.client.VersionFilter).
        pending: list[Awaitable[Any]] = []
        for delivery in plan.deliveries:
            topic = deliver[delivery.subscriber]
            for companion in delivery.companions:
                pending.append(
                    await topic.send(key=companion["id"].encode(), value=orjson.dumps(companion))
                )
            obj = delivery.stix_object
            pending.append(await topic.send(key=obj["id"].encode(), value=orjson.dumps(obj)))
            latency = (
                (now - delivery.published_at).total_seconds() if delivery.published_at else None
            )
            metrics.observe_delivery(
                delivery.subscriber, delivery.agreement_id or "", latency, delivery.revocation
            )
        delivered = {d.subscriber for d in plan.deliveries}
        for decision in plan.decisions:
            if not decision.allow:
                for code in decision.reason_codes:
                    metrics.observe_denial(code.value)
            entry = {
                **decision.as_record(),
                "decided_at": now.isoformat(),
                "delivered": decision.subscriber in delivered and decision.allow,
            }
            await audit.send(key=decision.object_id.encode(), value=orjson.dumps(entry))
        if pending:
            await asyncio.gather(*pending)

    async def _quarantine(record: NormalizedObject) -> None:
        rejection = Rejection(
            object_id=record.object_id,
            reason=Reason.VERSION_CONFLICT,
            message=(
                f"{record.object_id} version {record.modified} was already accepted with different "
                "content; publish a new version with a later `modified` instead of rewriting one"
            ),
        )
        receipt = Receipt(
            submission_id=record.submission_id,
            publisher=record.publisher,
            received_at=record.received_at,
            accepted=0,
            rejected=1,
            rejections=[rejection],
        )
        await deadletter.send(
            key=record.object_id.encode(),
            value=orjson.dumps(
                {
                    "submission_id": record.submission_id,
                    "publisher": record.publisher,
                    "reasons": [rejection.model_dump(mode="json")],
                    "payload": orjson.dumps(record.object).decode(),
                    "quarantined": True,
                }
            ),
        )
        await receipts[record.publisher].send(
            key=record.submission_id.encode(), value=receipt.model_dump_json().encode()
        )
        metrics.observe_rejections(record.publisher, [Reason.VERSION_CONFLICT.value])

    @app.timer(interval=settings.expiry_scan_seconds)
    async def expire() -> None:
        """Keys whose sources have expired (or that can be collected) get a tick."""
        if expiry.stale:
            await _rebuild_expiry_index()
        now = datetime.now(UTC)
        retry = now + timedelta(seconds=TICK_RETRY_INTERVALS * settings.expiry_scan_seconds)
        for key in expiry.pop_due(now):
            raw = table.get(key)
            if raw is None:
                continue  # deleted, or its partition is no longer ours
            state = decode_state(raw)
            if due_for_tick(state, now, grace):
                await ticks.send(key=key, value=b"tick")
                # The agent rewrites the key when it handles the tick (and so sets its next
                # deadline); if the tick is lost, try again later.
                expiry.set_if_absent(key, retry)
            else:
                expiry.set_if_absent(key, state_deadline(state, grace))
        metrics.set_dedup_keys(len(expiry))

    async def _rebuild_expiry_index() -> None:
        """Read each local key's deadline (from the encoded state's header, without decoding
        the whole state) into the expiry index, letting the event loop run between batches."""
        try:
            await _scan(REBUILD_BATCH)
        except RuntimeError:
            # The in-memory store is a dict that the agent changed under the iterator: scan
            # it again in one go (rocksdb iterators read a snapshot).
            await _scan(None)

    async def _scan(batch_size: int | None) -> None:
        expiry.begin_rebuild()
        batch: list[tuple[bytes, datetime | None]] = []
        for key, raw in table.items():
            header = deadline_header(raw)
            if header is None:  # an older encoding: decode it
                deadline = state_deadline(decode_state(raw), grace)
            else:
                deadline = next_deadline(header[0], header[1], grace)
            batch.append((key, deadline))
            if batch_size is not None and len(batch) >= batch_size:
                expiry.rebuilt(batch)
                batch = []
                await asyncio.sleep(0)
        expiry.rebuilt(batch)
        expiry.end_rebuild()
