"""A librdkafka (confluent-kafka) producer for an agent's output topics, next to Faust's.

Why (docs/performance.md, "e2e"): Faust's `Topic.send` → aiokafka costs tens of microseconds of
Python per record (sensors, FutureMessage, pure-Python murmur2, small produce requests), and the
route agent writes ~10 records per input.  librdkafka batches, partitions and writes in C.

What it keeps (docs/dedup.md, the ack-before-state rule):
- acks=all with idempotence on, so a record the broker acknowledged is in the log once;
- `Batch`: the records of one agent batch; `await batch.acked()` returns once the broker
  acknowledged every one of them, and raises `DeliveryFailed` (naming the topic and the
  broker's error) if any one failed.  The agent awaits it BEFORE its table writes and before its
  events are acked, so a crash in between only re-sends records (replays dedupe them);
- keyed records land on the partition Faust/aiokafka would pick: librdkafka's `murmur2_random`
  partitioner is the Java client's murmur2 (aiokafka's `DefaultPartitioner` is the same), so
  consumers that expect co-partitioning see no change.

How: the delivery callbacks run on one poll thread; a batch counts them under a lock and wakes
the event loop once (`call_soon_threadsafe`) when its last record is acknowledged, not per record.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiokafka.partitioner import murmur2
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from stixbus.errors import StixbusError
from stixbus.kafka.acls import WORKER
from stixbus.kafka.config import confluent_config
from stixbus.settings import Settings

POLL_SECONDS = 0.05  # the poll thread's wait for delivery reports when idle
QUEUE_FULL_WAIT = 0.002  # local queue full (BufferError): wait for the poll thread to drain it
# A batch still waiting for acknowledgements says so this often: an agent that waits on the
# broker is otherwise indistinguishable from an idle one (docs/runbook.md).
ACK_WAIT_LOG_SECONDS = 10.0

log = logging.getLogger(__name__)


def key_partition(key: bytes, partitions: int) -> int:
    """The partition a keyed record lands on when no partition is given: aiokafka's
    `DefaultPartitioner` (Faust's producer), which librdkafka's `murmur2_random` matches.  For an
    agent that groups records by partition itself (agents/feedback.py, the index)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class DeliveryFailed(StixbusError, RuntimeError):
    """The broker did not acknowledge a record: the batch must not be committed (crash, replay)."""


def producer_config(settings: Settings, principal: str = WORKER) -> dict[str, Any]:
    """librdkafka producer settings: the shared connection/security config (`confluent_config`,
    SASL_SSL included) plus the worker's producer settings (linger, batch size, compression,
    record size), acks=all and idempotence, and the Java-compatible murmur2 partitioner."""
    return {
        **confluent_config(settings, principal),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": settings.producer_linger_ms,
        "batch.size": settings.producer_batch_bytes,
        "compression.type": settings.producer_compression,
        "message.max.bytes": settings.max_record_bytes,
        # Faust/aiokafka's DefaultPartitioner: murmur2(key) & 0x7fffffff % partitions.
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": 1_000_000,
        "message.timeout.ms": settings.producer_delivery_timeout_ms,
    }


class Batch:
    """The records of one agent batch; `acked()` waits for all of their acknowledgements."""

    __slots__ = ("_done", "_error", "_future", "_lock", "_loop", "_queued", "_sealed", "_sent")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, queued: Callable[[], int] = lambda: 0
    ) -> None:
        self._loop = loop
        self._queued = queued  # records the producer holds in all, for the wait log
        self._future: asyncio.Future[None] = loop.create_future()
        self._lock = threading.Lock()
        self._sent = 0
        self._done = 0
        self._sealed = False
        self._error: DeliveryFailed | None = None

    @property
    def sent(self) -> int:
        return self._sent

    def _count(self) -> None:  # the loop thread, once per produced record
        with self._lock:
            self._sent += 1

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:  # the poll thread
        with self._lock:
            self._done += 1
            if err is not None and self._error is None:
                self._error = DeliveryFailed(
                    f"record to topic {msg.topic()!r} (partition {msg.partition()}) was not "
                    f"acknowledged by the broker: {err.str()}; the batch is not committed and "
                    "will be replayed after the worker restarts"
                )
            finished = self._sealed and self._done == self._sent
        if finished:
            self._loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:  # the loop thread
        if self._future.done():
            return
        if self._error is not None:
            self._future.set_exception(self._error)
        else:
            self._future.set_result(None)

    async def acked(self) -> None:
        """Return once the broker acknowledged every record sent in this batch; raise
        `DeliveryFailed` if it refused any (after all of them were reported)."""
        with self._lock:
            self._sealed = True
            finished = self._done == self._sent
        if finished:
            self._finish()
        started = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(self._future), ACK_WAIT_LOG_SECONDS)
                return
            except TimeoutError:
                with self._lock:
                    waiting, sent = self._sent - self._done, self._sent
                log.warning(
                    "fast producer: %d of %d records of a batch are not acknowledged after "
                    "%.0f s (the producer holds %d records); the agent waits for the broker, "
                    "and fails the batch at the delivery timeout "
                    "(STIXBUS_PRODUCER_DELIVERY_TIMEOUT_MS)",
                    waiting,
                    sent,
                    time.monotonic() - started,
                    self._queued(),
                )


class FastProducer:
    """One librdkafka producer per worker process; thread-safe `produce`, asyncio batches."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._producer = Producer(config)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings, principal: str = WORKER) -> FastProducer:
        return cls(producer_config(settings, principal))

    def batch(self) -> Batch:
        """A new batch bound to the running event loop (starts the poll thread on first use)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._poll, name="stixbus-fast-producer", daemon=True
            )
            self._thread.start()
        return Batch(asyncio.get_running_loop(), self._producer.__len__)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(POLL_SECONDS)

    async def send(
        self, batch: Batch, topic: str, key: bytes | None, value: bytes, partition: int = -1
    ) -> None:
        """Queue one record in `batch` (not awaiting its ack: `batch.acked()` does).
        `partition` -1: the partitioner picks (murmur2 of the key)."""
        while True:
            try:
                self._producer.produce(
                    topic, value, key, partition=partition, on_delivery=batch._on_delivery
                )
            except BufferError:  # librdkafka's local queue is full: let the poll thread drain
                await asyncio.sleep(QUEUE_FULL_WAIT)
                continue
            except KafkaException as exc:  # refused before sending (e.g. over the size limit)
                raise DeliveryFailed(
                    f"record to topic {topic!r} ({len(value):,} bytes) was refused by the "
                    f"producer: {exc.args[0].str()}; the batch is not committed and will be "
                    "replayed after the worker restarts"
                ) from exc
            batch._count()
            return

    def outputs(self) -> Outputs:
        return Outputs(self)

    def close(self, timeout: float = 10.0) -> int:
        """Flush what is queued, stop the poll thread; returns the records still undelivered."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        return self._producer.flush(timeout)


class Outputs:
    """One agent batch's records: through the fast producer when there is one, else through
    Faust (`Topic.send`, acks collected).  `acked()` waits for every acknowledgement."""

    __slots__ = ("_acks", "_batch", "_fast")

    def __init__(self, fast: FastProducer | None) -> None:
        self._fast = fast
        self._batch = fast.batch() if fast is not None else None
        self._acks: list[Awaitable[object]] = []

    async def send(
        self, topic: faust.TopicT, key: bytes | None, value: bytes, partition: int | None = None
    ) -> None:
        """`partition` None: the partitioner picks (murmur2 of the key, `key_partition`)."""
        if self._fast is not None and self._batch is not None:
            where = -1 if partition is None else partition
            await self._fast.send(self._batch, topic.get_topic_name(), key, value, where)
        else:
            self._acks.append(await topic.send(key=key, value=value, partition=partition))

    async def acked(self) -> None:
        """Return once the broker acknowledged every record of the batch (`DeliveryFailed`
        if it refused one through the fast producer)."""
        await asyncio.gather(*self._acks)
        if self._batch is not None:
            await self._batch.acked()
