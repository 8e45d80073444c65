"""Timer: ticks for keys whose sources expired (or that can be collected).

A Faust table may only be changed while processing an event of its partition, so the timer does
not write: it sends a tick (keyed by the dedup key) to `ticks`, which the route agent consumes
with `normalized`.  An in-memory expiry index (deadline, key) of the keys due within a horizon
(`STIXBUS_EXPIRY_HORIZON_SECONDS`), updated by the route agent on every table write and rebuilt
from the local table's deadline headers after each rebalance and before the horizon runs out,
tells the timer which keys are due without scanning the table on every run.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import faust
from faust.types import TableT

from stixbus import metrics
from stixbus.context import BusContext
from stixbus.core.expiry import ExpiryIndex, due_for_tick, next_deadline, state_deadline
from stixbus.core.state_codec import deadline_header, decode_state

# A tick that was sent but whose key was not rewritten (lost in a rebalance, say) is retried
# after this many scan intervals.
TICK_RETRY_INTERVALS = 12
# Keys of the local table read per batch while rebuilding the index (the event loop runs between).
REBUILD_BATCH = 5000


def register(app: faust.App, ctx: BusContext, table: TableT, expiry: ExpiryIndex) -> None:
    settings = ctx.settings
    ticks = app.topic(ctx.names.ticks)
    grace = settings.dedup_grace_seconds

    @table.on_recover
    async def _recovered() -> None:
        expiry.stale = True  # local partitions may have changed: rebuild on the next run

    @app.timer(interval=settings.expiry_scan_seconds)
    async def expire() -> None:
        if expiry.needs_rebuild(datetime.now(UTC)):  # a rebalance, or the horizon runs out
            await _rebuild()
        now = datetime.now(UTC)
        retry = now + timedelta(seconds=TICK_RETRY_INTERVALS * settings.expiry_scan_seconds)
        for key in expiry.pop_due(now):
            raw = table.get(key)
            if raw is None:
                continue  # deleted, or its partition is no longer ours
            state = decode_state(raw)
            if due_for_tick(state, now, grace):
                await ticks.send(key=key, value=b"tick")
                expiry.set_if_absent(key, retry)  # the agent's rewrite sets the real deadline
            else:
                expiry.set_if_absent(key, state_deadline(state, grace))
        metrics.set_dedup_keys(len(expiry), expiry.held)  # the table's keys; the held ones

    async def _rebuild() -> None:
        try:
            await _scan(REBUILD_BATCH)
        except RuntimeError:
            # The memory store is a dict the agent changed under the iterator: scan it again in
            # one go (rocksdb iterators read a snapshot).
            await _scan(None)

    async def _scan(batch_size: int | None) -> None:
        """Each local key's deadline, read from the encoded state's header (the index keeps
        those within its horizon and counts the rest)."""
        expiry.begin_rebuild(datetime.now(UTC))
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
