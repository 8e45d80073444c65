"""Faust agents: thin shells that read a topic, call a pure function, and write the result.

`register_all` is the one list of agents a worker runs, in pipeline order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import faust

    from stixbus.context import BusContext


def register_all(app: faust.App, ctx: BusContext) -> None:
    """ingest → ownership → route (+ expiry timer), the agreements, markings and
    false-positive readers, feedback, health, observe, the stall watchdog."""
    from agents import (
        agreements,
        feedback,
        health,
        ingest,
        markings,
        observe,
        ownership,
        route,
        stall,
    )
    from stixbus.kafka.fast_producer import FastProducer

    # One librdkafka producer per worker for the ownership, route and feedback index outputs
    # (None: Faust's).
    fast = FastProducer.from_settings(ctx.settings) if ctx.settings.fast_producer else None
    store, agreements_loaded = agreements.register(app, ctx)
    memory, markings_loaded = markings.register(app, ctx)
    ingest.register(app, ctx, memory, markings_loaded)
    ownership.register(app, ctx, fast)
    false_positives = feedback.register_counts(app, ctx)
    route.register(app, ctx, store, agreements_loaded, false_positives, fast)
    feedback.register(app, ctx, fast)
    health.register(app, ctx)
    observe.register(app, ctx)
    stall.register(app, ctx)
