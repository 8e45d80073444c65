"""The bus's own client side: publish submissions, read topics, drop redeliveries idempotently.

`conn` is `stixbus.kafka.config.client_kwargs(settings)`: bootstrap servers plus security.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from schemas.envelope import SUBMISSION_HEADER
from stixbus.errors import NotFound, StixbusError
from stixbus.settings import DEFAULT_MAX_RECORD_BYTES

_C = TypeVar("_C", AIOKafkaProducer, AIOKafkaConsumer)


async def start_client(client: _C) -> _C:
    """`await client.start()`, closing the client when the start fails (an unreachable broker),
    so no "Unclosed AIOKafkaProducer/Consumer" warning follows the error."""
    try:
        await client.start()
    except BaseException:
        try:
            await client.stop()
        except Exception:  # the start's error is the one to report
            pass
        raise
    return client


@dataclass(frozen=True)
class Published:
    submission_id: str
    topic: str
    partition: int
    offset: int


async def publish(
    conn: dict[str, Any],
    topic: str,
    payload: bytes,
    submission_id: str | None = None,
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Published:
    """Write one submission to an ingest topic and wait for the broker's acknowledgement.
    `max_record_bytes`: pass `settings.max_record_bytes` (the topics' limit)."""
    submission_id = submission_id or str(uuid.uuid4())
    producer = AIOKafkaProducer(
        **conn,
        acks="all",
        enable_idempotence=True,
        max_request_size=max_record_bytes,
    )
    await start_client(producer)
    try:
        meta = await producer.send_and_wait(
            topic,
            payload,
            key=submission_id.encode(),
            headers=[(SUBMISSION_HEADER, submission_id.encode())],
        )
        return Published(submission_id, topic, meta.partition, meta.offset)
    finally:
        await producer.stop()


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]

    def json(self) -> object:
        return orjson.loads(self.value)


async def read_topic(
    conn: dict[str, Any],
    topic: str,
    *,
    group_id: str | None = None,
    from_beginning: bool = False,
    follow: bool = False,
    idle_timeout: float = 2.0,
    max_wait: float = 30.0,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> AsyncIterator[Record]:
    """Yield records of one topic.

    Without `follow` it stops once it has read up to the end offsets seen at start (or after
    `max_wait` seconds).  With a `group_id` it commits offsets, so the next run resumes.
    """
    consumer = AIOKafkaConsumer(
        **conn,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if (from_beginning or group_id) else "latest",
        fetch_max_bytes=2 * max_record_bytes,
        max_partition_fetch_bytes=max_record_bytes,
    )
    await start_client(consumer)
    try:
        cluster = await consumer._client.fetch_all_metadata()
        partitions = cluster.partitions_for_topic(topic)
        if partitions is None:
            # Under ACLs a topic this principal may not describe is missing from the listing:
            # ask for it by name, so a denial is reported as one (docs/security.md).
            probe = ClusterMetadata()
            await consumer._client._metadata_update(probe, [topic])
            if topic in probe.unauthorized_topics:
                raise TopicAuthorizationFailedError(
                    f"{topic}: the broker denies this principal access (Kafka ACL); an org may "
                    "read only its own deliver and receipts topics"
                )
            raise NotFound(
                f"topic {topic!r} does not exist", "run `stixbus topics` to create and list them"
            )
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if group_id:
            consumer.subscribe([topic])
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=200)
            tps = sorted(consumer.assignment())
            if from_beginning:
                await consumer.seek_to_beginning(*tps)
            else:
                # The getmany() calls above may have fetched records we dropped: rewind to the
                # group's committed offsets (the beginning where it has none, like "earliest").
                committed = await consumer.seek_to_committed(*tps)
                fresh = [tp for tp, offset in committed.items() if not offset]
                if fresh:
                    await consumer.seek_to_beginning(*fresh)
        else:
            consumer.assign(tps)
            if from_beginning:
                await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        started = time.monotonic()
        last_data = time.monotonic()
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=1000)
            for tp, messages in batch.items():
                for m in messages:
                    last_data = time.monotonic()
                    yield Record(
                        topic=m.topic,
                        partition=m.partition,
                        offset=m.offset,
                        timestamp_ms=m.timestamp,
                        key=m.key,
                        value=m.value or b"",
                        headers={k: v.decode("utf-8", "replace") for k, v in (m.headers or [])},
                    )
                if group_id and messages:
                    await consumer.commit({tp: messages[-1].offset + 1})
            if follow:
                continue
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= end[tp] for tp in tps) and time.monotonic() - last_data >= min(
                idle_timeout, 0.5
            ):
                return
            if time.monotonic() - started > max_wait:
                return
    finally:
        await consumer.stop()


class VersionFilter:
    """Drops a delivered (id, modified) seen before: redelivery after a crash is idempotent.

    With a `path`, the versions seen are appended there (one `id modified` line each) and read
    back on start, so the drop also holds across restarts of the consumer itself.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._file: IO[str] | None = None
        if path is not None:
            if path.exists():
                for line in path.read_text(encoding="utf-8").splitlines():
                    object_id, _, modified = line.partition(" ")
                    self._seen.add((object_id, modified))
            self._file = path.open("a", encoding="utf-8")

    def is_new(self, stix_object: object) -> bool:
        if not isinstance(stix_object, dict):
            return True
        version = (str(stix_object.get("id")), str(stix_object.get("modified", "")))
        if version in self._seen:
            return False
        self._seen.add(version)
        if self._file is not None:
            self._file.write(f"{version[0]} {version[1]}\n")
            self._file.flush()
        return True
        version = (str(stix_object.get("id")), str(stix_object.get("modified", "")))
        if version in self._seen:
            return False
        self._seen.add(version)
        return True


class BrokerError(StixbusError):
    """The broker could not be reached, or refused this principal (an ACL)."""

    fix = "start it (`stixbus up`) or point STIXBUS_BOOTSTRAP_SERVERS at it"


_T = TypeVar("_T")


def run_on_broker(coro: Coroutine[Any, Any, _T]) -> _T:
    """`asyncio.run` for commands: an unreachable or refusing broker becomes a BrokerError,
    and aiokafka's own log lines about the failed connection are not printed (the BrokerError
    is the one line the user sees; STIXBUS_DEBUG=1 shows them)."""
    quiet = _QuietKafkaClient() if not os.environ.get("STIXBUS_DEBUG") else None
    if quiet is not None:
        logging.getLogger("aiokafka").addFilter(quiet)
        for name in _aiokafka_loggers():
            logging.getLogger(name).addFilter(quiet)
    try:
        return asyncio.run(coro)
    except KafkaConnectionError as exc:
        raise BrokerError(f"cannot reach the Kafka broker {_where(exc)}") from exc
    except TopicAuthorizationFailedError as exc:
        raise BrokerError(
            str(exc.args[0]) if exc.args else "the broker denies this principal access",
            "use the org's own topics, or ask the operator for access (docs/security.md)",
        ) from exc
    finally:
        if quiet is not None:
            logging.getLogger("aiokafka").removeFilter(quiet)
            for name in _aiokafka_loggers():
                logging.getLogger(name).removeFilter(quiet)


class _QuietKafkaClient(logging.Filter):
    """Drops aiokafka's connection errors during a command (they end in one BrokerError)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL


def _aiokafka_loggers() -> list[str]:
    return [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "aiokafka"]


def _where(exc: KafkaConnectionError) -> str:
    """'at host:port' from aiokafka's 'Unable to bootstrap from [('host', port, ...)]'."""
    detail = str(exc.args[0]) if exc.args else str(exc)
    hosts = re.findall(r"\('([^']+)', (\d+)", detail)
    if hosts:
        return "at " + ", ".join(f"{h}:{p}" for h, p in hosts)
    return f"({detail})" if detail else ""
