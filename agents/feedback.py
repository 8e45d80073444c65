"""Feedback stages: audit + members' reports → aggregated sightings/opinions to producers, and the
false-positive counts the route stage reads (pure logic: stixbus/core/feedback.py).

- `audit` → `feedback` (partition of the delivered id): every delivery the audit records
  (`stixbus.core.audit.delivery_facts`), re-partitioned so it meets the reports about that id;
  a batch of audit records makes one record per partition (`batch_deliveries`), sent through the
  worker's librdkafka producer when it has one, acknowledged before the batch's offsets;
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
from collections.abc import Sequence
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
    apply_deliveries,
    batch_deliveries,
    contribute,
    deliveries_by_id,
    flush,
    flush_interval,
)
from stixbus.kafka.config import client_kwargs
from stixbus.kafka.fast_producer import DeliveryFailed, FastProducer, Outputs, key_partition
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


def register(app: faust.App, ctx: BusContext, fast: FastProducer | None = None) -> None:
    """`fast`: the worker's librdkafka producer for the index's records (None: Faust's)."""
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

    partitions = settings.partitions  # the feedback topic's and the table's (topics.py)

    def partition_of(key: bytes) -> int:
        return key_partition(key, partitions)

    @app.agent(app.topic(names.audit), name="stixbus.feedback.index")
    async def index_deliveries(stream: faust.StreamT[bytes]) -> None:
        # faust.Stream.take_events (as in agents/route.py): the batch's events are acked only
        # after the body ran, i.e. after the broker acknowledged the batch's records.
        batches = stream.take_events(  # type: ignore[attr-defined]
            settings.feedback_index_batch_max, within=settings.feedback_index_batch_seconds
        )
        async for events in batches:
            try:
                await _index(events)
            except DeliveryFailed as exc:  # not committed: replayed after the restart
                await app.crash(exc)
                raise

    async def _index(events: Sequence[faust.EventT]) -> None:
        facts = [
            fact
            for event in events
            if b'"deliveries":[]' not in event.value  # delivered nothing: a cheap skip
            for fact in delivery_facts(AuditEntry.model_validate_json(event.value))
            if forwarded.is_new(fact)
        ]
        if not facts:
            return
        out = Outputs(fast)
        for record in batch_deliveries(facts, partition_of):
            await out.send(feedback_topic, record.key, record.value, record.partition)
        await out.acked()  # raises DeliveryFailed if the broker refused a record

    @app.agent(feedback_topic, name="stixbus.feedback")
    async def feedback(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            key = bytes(event.key or b"")
            record = FeedbackEvent.model_validate_json(event.value)
            # `deliveries` (batched, keys of this partition) or `delivery` (one fact, from
            # before the batching): one table read and at most one write per delivered id.
            deliveries = record.deliveries or ([record.delivery] if record.delivery else [])
            if deliveries:
                for delivered_id, facts in deliveries_by_id(deliveries).items():
                    fact_key = delivered_id.encode()
                    updated = apply_deliveries(
                        DeliveredIndex.decode(delivered.get(fact_key)), facts
                    )
                    if updated is not None:
                        delivered[fact_key] = updated.encode()
                continue
            index = DeliveredIndex.decode(delivered.get(key))
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
