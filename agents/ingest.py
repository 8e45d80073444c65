"""ingest.<org> → claims + receipts.<org> (+ deadletter): the normalise stage's shell."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta

import faust

from agents import validation_pool
from schemas.envelope import SUBMISSION_HEADER
from schemas.feedback import FeedbackEvent
from stixbus import metrics
from stixbus.context import BusContext
from stixbus.core.feedback import split_feedback
from stixbus.core.guard import guarded_receipt
from stixbus.core.marking_memory import MarkingMemory, marking_key
from stixbus.core.normalise.handling import trusted_publish_time
from stixbus.warninglists import guard_index

log = logging.getLogger(__name__)


def register(
    app: faust.App, ctx: BusContext, memory: MarkingMemory, markings_loaded: asyncio.Event
) -> None:
    names = ctx.names
    ingest = app.topic(*(names.ingest(o.id) for o in ctx.registry.publishers))
    claims = app.topic(names.claims)
    feedback = app.topic(names.feedback)
    markings = app.topic(names.markings)
    deadletter = app.topic(names.deadletter)
    receipts = {o.id: app.topic(names.receipts(o.id)) for o in ctx.registry.publishers}
    skew = timedelta(seconds=ctx.settings.record_time_skew_seconds)
    settings = ctx.settings
    guard = guard_index(ctx.registry, settings.guard_lists) if settings.guard_enabled else None
    pool = validation_pool.from_settings(ctx.settings)

    # One actor per ingest partition: a publisher's heavy submission (checked off the event
    # loop by the pool) holds up only its own partition, in order, never another publisher's.
    @app.agent(ingest, name="stixbus.core.normalise", isolated_partitions=True)
    async def normalise(stream: faust.StreamT[bytes]) -> None:
        pool.start()
        # Into the stream before any wait: an isolated actor stopped by a rebalance before it
        # iterates stays registered with Faust's conductor, and the next rebalance that does
        # not give its partition back crashes the worker (conductor `_update_tp_index`
        # assertion; faust-streaming#529).  The markings gate is per event (free once set).
        first = True
        async for event in stream.events():
            message = event.message
            if first:  # where this actor's life starts reading (rebalances, restarts)
                log.info("ingest %s: first submission at offset %d", message.tp, message.offset)
                first = False
            if not markings_loaded.is_set():
                await _wait_logged(markings_loaded, message.tp)
            publisher = ctx.registry.get(names.org_of_ingest(message.topic))
            headers = dict(message.headers or [])
            submission_id = _submission_id(headers.get(SUBMISSION_HEADER))
            received_at = datetime.now(UTC)
            published_at = trusted_publish_time(
                datetime.fromtimestamp(message.timestamp, UTC), received_at, skew
            )
            outcome = await pool.normalise(
                bytes(event.value or b""),
                publisher,
                ctx.registry,
                ctx.settings.limits,
                submission_id=submission_id,
                received_at=received_at,
                published_at=published_at,
                remembered_markings=memory.known(publisher.id),
            )
            receipt = outcome.receipt
            if guard is not None and outcome.accepted:
                warned = guarded_receipt(receipt, outcome.accepted, guard)
                if warned is not None:
                    receipt, hit_lists = warned
                    for lists in hit_lists:
                        metrics.observe_guard_hits(lists)
            metrics.observe_submission(publisher.id, receipt.accepted + receipt.rejected)
            metrics.observe_rejections(publisher.id, (r.reason for r in receipt.rejections))
            for marking_id in outcome.defined_markings:
                await markings.send(key=marking_key(publisher.id, marking_id), value=b"1")
            memory.remember(publisher.id, outcome.defined_markings)
            # Sightings and opinions of received ids are feedback to their producers
            # (agents/feedback.py), keyed by the id they name: never routed to subscribers.
            intel, reports = split_feedback(outcome.accepted)
            for report in reports:
                await feedback.send(
                    key=report.target_id.encode(),
                    value=FeedbackEvent(report=report).model_dump_json().encode(),
                )
            for record in intel:
                # Keyed by STIX id: the ownership check (agents/ownership.py) owns the id.
                await claims.send(
                    key=record.object_id.encode(), value=record.model_dump_json().encode()
                )
            if outcome.dead_letter is not None:
                letter = outcome.dead_letter.model_copy(
                    update={
                        "source_topic": message.topic,
                        "source_partition": message.partition,
                        "source_offset": message.offset,
                    }
                )
                await deadletter.send(
                    key=submission_id.encode(), value=letter.model_dump_json().encode()
                )
            await receipts[publisher.id].send(
                key=submission_id.encode(), value=receipt.model_dump_json().encode()
            )


MARKINGS_WAIT_WARNING_SECONDS = 10.0


async def _wait_logged(loaded: asyncio.Event, tp: object) -> None:
    """Wait for the markings replay; a wait past 10 s is logged once (a stalled stage)."""
    try:
        await asyncio.wait_for(loaded.wait(), MARKINGS_WAIT_WARNING_SECONDS)
    except TimeoutError:
        log.warning(
            "ingest %s waits for the markings replay for more than %gs; no submission of this "
            "partition is checked until it is loaded (check the markings topic's leader)",
            tp,
            MARKINGS_WAIT_WARNING_SECONDS,
        )
        await loaded.wait()


def _submission_id(header: bytes | None) -> str:
    """The publisher's submission id when it sent a sane one, else a fresh one."""
    if header:
        text = header.decode("utf-8", "replace")
        if 0 < len(text) <= 128 and text.isprintable():
            return text
    return str(uuid.uuid4())
