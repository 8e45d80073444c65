"""Timer: the stall watchdog (rule in stixbus/core/stall.py).

Every `STIXBUS_STALL_CHECK_SECONDS` it compares, for each partition this worker consumes
(changelogs aside), the offset Faust last committed with the partition's end offset on the
broker.  Records that wait on an unmoved committed offset, outside a rebalance:
- for half of `STIXBUS_STALL_SECONDS`: the partition is read again from its committed offset
  (a WARNING).  The chaos run's stalls had that shape: the consumer's read offset had run past
  records it never handed to the agent, so they were never acked and the commit stopped below
  them (docs/runbook.md, "A stalled worker");
- for the whole of it, the read again notwithstanding: the worker stops (one ERROR line naming
  the partitions, and its consumer state), and its restart reads them from the committed
  offset.
Replays dedupe what was already written.  A broker that does not answer is no stall (nothing
is sampled).
"""

from __future__ import annotations

import logging
import time

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from stixbus import worker_state
from stixbus.context import BusContext
from stixbus.core.stall import StallWatch, has_hole
from stixbus.errors import StixbusError
from stixbus.kafka._compat import consumer_books
from stixbus.kafka.config import client_kwargs

log = logging.getLogger(__name__)


class PartitionStalled(StixbusError, RuntimeError):
    """Records wait on a partition this worker owns and nothing moves: restart the worker."""


def register(app: faust.App, ctx: BusContext) -> None:
    settings = ctx.settings
    bound = settings.stall_seconds
    if bound <= 0:
        return
    watch = StallWatch()
    offsets: dict[str, AIOKafkaConsumer] = {}

    @app.timer(settings.stall_check_seconds, name="stixbus.stall")
    async def watch_partitions() -> None:
        consumer = app.consumer
        if app.rebalancing or not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            watch.forget()
            return
        mine = [
            tp
            for tp in consumer.assignment()
            if tp.topic not in app.tables.changelog_topics and app.topics.acks_enabled_for(tp.topic)
        ]
        try:
            if "client" not in offsets:
                client = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
                await client.start()
                offsets["client"] = client
            ends = await offsets["client"].end_offsets(
                [TopicPartition(tp.topic, tp.partition) for tp in mine]
            )
        except Exception:  # the broker is away: no sample, and no stall is counted
            watch.forget()
            if "client" in offsets:
                await offsets.pop("client").stop()
            return
        by_name = {f"{tp.topic}/{tp.partition}": tp for tp in mine}
        books = consumer_books(consumer, mine)
        positions = {
            name: (books[tp].committed, ends.get(TopicPartition(tp.topic, tp.partition)))
            for name, tp in by_name.items()
        }
        holes = frozenset(
            name
            for name, tp in by_name.items()
            if has_hole(books[tp].committed, books[tp].lowest_acked)
        )
        now = time.monotonic()
        watch.observe(now, positions)
        seek, stalls = watch.actions(now, positions, bound, holes, 2 * settings.stall_check_seconds)
        for stall in seek:
            tp = by_name[stall.partition]
            log.warning(
                "%s (read up to offset %s): reading it again from the committed offset; the "
                "worker stops if it still does not move after %g s (STIXBUS_STALL_SECONDS)",
                stall.describe(),
                books[tp].read,
                bound,
            )
            await consumer.seek(tp, stall.committed or 0)
        if stalls:
            reason = PartitionStalled(
                "records wait on partitions this worker owns and nothing moves: "
                + "; ".join(s.describe() for s in stalls),
                "the worker stops so that its restart reads them again from the committed "
                "offset (docs/runbook.md, 'A stalled worker'); STIXBUS_STALL_SECONDS sets "
                "the bound",
            )
            log.error("%s", reason)
            worker_state.log_state(app, logging.ERROR)  # what the stalled consumer held
            await app.crash(reason)

    @app.on_before_shutdown.connect
    async def close_offsets(*_args: object, **_kwargs: object) -> None:
        if "client" in offsets:
            await offsets.pop("client").stop()
