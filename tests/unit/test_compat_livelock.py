"""Faust's livelock check does not crash the worker on a partition that has no position yet
(stixbus/kafka/_compat.py, `livelock_check_skips_unpositioned`)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka.consumer.subscription_state import TopicPartitionState
from aiokafka.structs import TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

from stixbus.kafka import _compat

TOPIC = TP("p.ingest.cert", 0)


def _thread(state: TopicPartitionState | None) -> Any:
    """What `verify_event_path` reads of a consumer thread: the aiokafka assignment, the app's
    monitor and acks, and a fetch path that is healthy (so the check goes on to the position)."""
    states = {} if state is None else {TopicPartition(TOPIC.topic, TOPIC.partition): state}
    assignment = SimpleNamespace(state_value=states.get, active=True)
    aiokafka_consumer = SimpleNamespace(
        _fetcher=SimpleNamespace(
            _subscriptions=SimpleNamespace(subscription=SimpleNamespace(assignment=assignment))
        )
    )
    app = SimpleNamespace(
        monitor=SimpleNamespace(stream_inbound_time={}),
        topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
    )
    return SimpleNamespace(
        _ensure_consumer=lambda: aiokafka_consumer,
        _verify_aiokafka_event_path=lambda now, tp: False,
        consumer=SimpleNamespace(app=app),
        time_started=0.0,
        tp_stream_timeout_secs=300.0,
        log=SimpleNamespace(error=lambda *a, **k: None),
    )


def _state(position: int | None, highwater: int | None) -> TopicPartitionState:
    async def build() -> TopicPartitionState:  # aiokafka creates a future: needs a loop
        state = TopicPartitionState(assignment=None)
        if position is not None:
            state.reset_to(position)
        state.highwater = highwater
        return state

    return asyncio.run(build())


def test_a_partition_awaiting_its_position_is_skipped_not_a_crash() -> None:
    _compat.livelock_check_skips_unpositioned()
    unpositioned = _state(position=None, highwater=40)
    # no AssertionError:
    AIOKafkaConsumerThread.verify_event_path(_thread(unpositioned), 10.0, TOPIC)


def test_a_partition_that_left_the_assignment_is_skipped() -> None:
    _compat.livelock_check_skips_unpositioned()
    AIOKafkaConsumerThread.verify_event_path(_thread(None), 10.0, TOPIC)  # no AttributeError


def test_a_positioned_partition_is_still_checked() -> None:
    _compat.livelock_check_skips_unpositioned()
    logged: list[Any] = []
    thread = _thread(_state(position=20, highwater=40))
    thread._log_slow_processing_stream = lambda *args: logged.append(args)
    thread.tp_stream_timeout_secs = 5.0  # started 10 s ago, nothing processed since
    AIOKafkaConsumerThread.verify_event_path(thread, 10.0, TOPIC)
    assert logged, "the livelock check no longer reaches a positioned partition"
