"""Feedback stages: audit + members' reports → aggregated sightings/opinions to producers, and the
false-positive counts the route stage reads (pure logic: stixbus/core/feedback.py).

- `audit` → `feedback` (key = delivered id): every delivery the audit records
  (`stixbus.core.audit.delivery_facts`), re-keyed so it meets the reports about that id;
- `feedback` (+ the reports agents/ingest.py diverts there) → table `stixbus-feedback`:
  who received the id and what stands behind it; accepted reports go to `feedback-sources`
  (key = dedup key), rejected ones get a receipt update on `receipts.<reporter>`;
- `feedback-sources` → table `stixbus-feedback-sources`: the aggregate per producer object,
  delivered on `deliver.<producer>`; the key's false-positive count to `false-positives`
  (compacted) plus a tick on `ticks`, so the route agent re-plans that key;
- a timer sends flushes for keys whose coalescing window is over (`FlushSchedule`);
- `follow_false_positives`: every worker replays `false-positives` for the route stage.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

import faust
import orjson

from schemas.audit import AuditEntry
from schemas.feedback import FalsePositiveCount, FeedbackEvent, ReportKind
from stixbus import metrics
from stixbus.context import BusContext
from stixbus.core.audit import delivery_facts
from stixbus.core.feedback import (
    DeliveredIndex,
    FlushSchedule,
    ForwardedDeliveries,
    KeyFeedback,
    accept_report,
    apply_delivery,
    contribute,
    flush,
    flush_interval,
)
from stixbus.kafka.config import client_kwargs
from stixbus.kafka.replay import Records, follow
from stixbus.kafka.topics import FEEDBACK_SOURCES_TABLE, FEEDBACK_TABLE


@dataclass
class FalsePositiveCounts:
    """The worker's replay of the false-positives topic: dedup key → distinct reporters.

    The aggregator also puts the new count in the tick it sends the route agent, which
    `apply` reads first, so the re-plan never races the replay."""

    counts: dict[str, int] = field(default_factory=dict)
    loaded: asyncio.Event = field(default_factory=asyncio.Event)

    def apply(self, value: bytes) -> None:
        count = FalsePositiveCount.model_validate_json(value)
        if count.reporters:
            self.counts[count.dedup_key] = count.reporters
        else:
            self.counts.pop(count.dedup_key, None)

    def replay(self, records: Records) -> None:
        for key, value in records:
            if key is not None and value is None:
                self.counts.pop(key.decode(), None)
            elif value is not None:
                self.apply(value)


def register_counts(app: faust.App, ctx: BusContext) -> FalsePositiveCounts:
    counts = FalsePositiveCounts()

    @app.task
    async def follow_false_positives() -> None:
        await follow(
            client_kwargs(ctx.settings), ctx.names.false_positives, counts.replay, counts.loaded
        )

    return counts


def register(app: faust.App, ctx: BusContext) -> None:
    names, registry, settings = ctx.names, ctx.registry, ctx.settings
    feedback_topic = app.topic(names.feedback)
    sources_topic = app.topic(names.feedback_sources)
    false_positives, ticks = app.topic(names.false_positives), app.topic(names.ticks)
    receipts = {o.id: app.topic(names.receipts(o.id)) for o in registry.publishers}
    deliver = {o.id: app.topic(names.deliver(o.id)) for o in registry.subscribers}
    delivered = app.Table(
        FEEDBACK_TABLE, partitions=settings.partitions, key_type=bytes, value_type=bytes
    )
    aggregates = app.Table(
        FEEDBACK_SOURCES_TABLE, partitions=settings.partitions, key_type=bytes, value_type=bytes
    )
    window = settings.feedback_window_seconds
    schedule = FlushSchedule()
    forwarded = ForwardedDeliveries()

    @app.agent(app.topic(names.audit), name="stixbus.feedback.index")
    async def index_deliveries(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            if b'"deliveries":[]' in value:
                continue  # a step that delivered nothing: nothing to index (cheap skip)
            for fact in delivery_facts(AuditEntry.model_validate_json(value)):
                if not forwarded.is_new(fact):
                    continue
                event = FeedbackEvent(delivery=fact)
                await feedback_topic.send(
                    key=fact.delivered_id.encode(), value=event.model_dump_json().encode()
                )

    @app.agent(feedback_topic, name="stixbus.feedback")
    async def feedback(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            key = bytes(event.key or b"")
            record = FeedbackEvent.model_validate_json(event.value)
            index = DeliveredIndex.decode(delivered.get(key))
            if record.delivery is not None:
                updated = apply_delivery(index, record.delivery)
                if updated is not None:
                    delivered[key] = updated.encode()
                continue
            report = record.report
            if report is None:
                continue
            outcome = accept_report(index, report)
            metrics.observe_feedback_report(
                report.reporter, report.kind.value, outcome.rejection is None
            )
            for contribution in outcome.contributions:
                out = FeedbackEvent(contribution=contribution)
                await sources_topic.send(
                    key=contribution.dedup_key.encode(), value=out.model_dump_json().encode()
                )
            if outcome.rejection is not None and report.reporter in receipts:
                await receipts[report.reporter].send(
                    key=report.submission_id.encode(),
                    value=outcome.rejection.model_dump_json().encode(),
                )

    @aggregates.on_recover
    async def _recovered() -> None:
        schedule.stale = True

    @app.agent(sources_topic, name="stixbus.feedback.aggregate")
    async def aggregate(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            key = bytes(event.key or b"")
            record = FeedbackEvent.model_validate_json(event.value)
            state = KeyFeedback.decode(aggregates.get(key))
            now = datetime.now(UTC)
            if record.contribution is not None:
                contribution = record.contribution
                if contribution.report.kind is ReportKind.FALSE_POSITIVE:
                    metrics.observe_false_positive(contribution.source.publisher)
                step = contribute(state, contribution, registry, now, window)
            elif record.flush:
                step = flush(state, registry, now, window)
            else:
                continue
            for output in step.outputs:
                topic = deliver.get(output.producer)
                if topic is None:
                    continue  # a publisher-only org has no deliver topic
                for obj in output.objects:
                    await topic.send(key=obj["id"].encode(), value=orjson.dumps(obj))
                metrics.observe_feedback_delivered(
                    output.producer, output.sightings + output.opinions
                )
            if step.false_positives is not None:
                count = FalsePositiveCount(dedup_key=key.decode(), reporters=step.false_positives)
                value = count.model_dump_json().encode()
                await false_positives.send(key=key, value=value)
                await ticks.send(key=key, value=value)  # the route agent re-plans the key
            aggregates[key] = step.state.encode()
            schedule.set(key, step.due)

    @app.timer(interval=flush_interval(window))
    async def flush_coalesced() -> None:
        if schedule.stale:
            schedule.rebuild(list(aggregates.items()), window)
        for key in schedule.take_due(datetime.now(UTC)):
            event = FeedbackEvent(flush=True)
            await sources_topic.send(key=key, value=event.model_dump_json().encode())
