"""Every use of a library's private internals, in one place (faust-streaming 0.15).

Keep this file small: each function says what it reaches into and why, so a library upgrade
that breaks one of them breaks here, with a test (tests/broker/test_security_host.py) that
shows it.

- `serve_only`: Faust's web server always mounts an index view at `/` (the production index
  when the statistics view is off) and blueprints a later version may add; the public settings
  (`web_*_enabled`, set in stixbus/app.py) turn off the known ones.  This installs an aiohttp
  middleware on the driver's `web_app` (an attribute of Faust's aiohttp driver, not a
  documented API) that answers 404 for every route whose path is not allowed: an allow list,
  so a view Faust adds in a future version is not served either.
- `TaxiiHTTPConnection` (taxii2-client 2.3.0 `taxii2client.common._HTTPConnection`): the TAXII
  pull connector builds one connection with our `requests` session (urllib3 `Retry`, TLS
  settings) and hands it to the client's `Collection`; the public constructors only take a
  user/password and build their own session.  Tested by tests/broker/test_connector_taxii.py.
- `RequestHandler` (aiohttp `web_protocol.RequestHandler`): stixbus/http.py `GuardedHandler`
  (the TAXII inbox's and the TAXII server's) subclasses it for the header deadline and the
  connection cap, which aiohttp's public settings do not offer.  Tested by
  tests/broker/test_connector_inbox.py.
- `leave_group_when_stopped` (aiokafka 0.14 `GroupCoordinator._maybe_leave_group`): a static
  group member (group.instance.id, stixbus/app.py) sends no LeaveGroup when it closes (KIP-345),
  so a worker stopped on purpose would hold its partitions for the whole session before the
  other workers take them.  The wrapper sends the LeaveGroup (v1, by member id, which the
  broker accepts for static members) on a clean stop; a crash sends nothing, so a restarted
  worker still takes its partitions back at once.  Tested by tests/broker/test_recovery.py
  (kill -9 restart) and tests/broker/test_multi_worker.py (SIGTERM hand-over).
- `faust_persisted_offsets` (faust-streaming 0.15 `stores/rocksdb.py`): each table partition is
  a RocksDB folder `<tabledir>/<table>-<partition>.db` (rocksdict, raw keys) holding the last
  applied changelog offset under `__faust\0offset__`.  Read before the worker starts to tell
  stale local state from a reset broker (stixbus/kafka/local_state.py), and written in the
  same layout by `FaustStoreWriter` for the bulk restore (stixbus/kafka/bulk_restore.py).
  Tested by tests/broker/test_runbook.py (reset broker, rebuilt store read back by the
  worker) and tests/unit/test_local_state.py.
- `as_current_event` (faust `streams._current_event`): a table write goes to the changelog
  partition and rocksdb partition of "the current event", a context variable the stream sets
  per event.  The route agent processes a batch (`Stream.take_events`) and writes the table
  after the batch's acks, so it sets the variable to each key's own event for its write.
  Tested by tests/broker/test_multi_worker.py and test_dedup_e2e.py (state on the right
  partition survives restarts and rebalances).
- `seek_uncommitted_to_start` (faust-streaming 0.15 `transport.consumer.Consumer.perform_seek`,
  `_committed_offset`, `_read_offset`, `_is_changelog_tp`, `_thread`): when a rebalance starts
  while Faust iterates a fetched batch (`Consumer.getmany`), it drops the rest of the batch
  although aiokafka's positions already moved past it; Faust relies on the seek to the
  committed offsets after the rebalance to fetch them again.  aiokafka seeks only partitions
  with a committed offset above 0, so on a partition nothing was committed on yet (a new topic,
  a fresh group, a quiet publisher's ingest partition) the dropped records were skipped for
  good: the restarted worker committed past them (docs/runbook.md, "submissions lost across
  kill -9").  The wrapper also seeks those partitions to their first offset (the
  `earliest` reset the worker is configured with), so they are read again: at-least-once.
  Tested by tests/broker/test_taxii_server.py (poll loop with a kill -9),
  tests/broker/test_recovery.py and tests/broker/test_rebalance_loss.py.
- `commit_only_what_was_processed` (faust-streaming 0.15 `Consumer._add_gap`,
  `Consumer._new_offset`, `_acked`, `_committed_offset`): Faust commits past records it never
  handed to an agent in two ways.  (1) When the consumer yields an offset more than one above
  the last read one, Faust records the offsets in between as a "gap" (meant for compacted
  topics and transaction markers) and commits over them as if processed.  (2) Its check for a
  hole at the head of the acked offsets lets exactly one unacked offset through (`min(acked) -
  committed > 1`).  The chaos run that kills a worker with a broker lost submissions both ways
  (docs/runbook.md, "Known issue"): after a restart the consumer handed over records from
  beyond the read offset, and the skipped ones were committed.  Every topic the worker's
  agents consume is delete-policy and written without transactions (stixbus/kafka/topics.py),
  so its offsets have no holes: a jump means skipped records, never missing ones.  The
  wrappers record no gap and commit nothing while the lowest acked offset is above the
  committed one; the records are then below a commit that does not move, and the stall
  watchdog (agents/stall.py) reads the partition again.  Tested by
  tests/unit/test_compat_commit.py.
- `livelock_check_skips_unpositioned` (faust-streaming 0.15
  `AIOKafkaConsumerThread.verify_event_path`, aiokafka 0.14 `TopicPartitionState.position`):
  Faust's livelock detector (a diagnostic that only logs) runs every 2.5 commit intervals
  when no rebalance is flagged, and reads each assigned partition's `position`.  Right after
  an assignment a partition has no position until aiokafka resets it, and that property is an
  `assert`: the detector raised `AssertionError` and crashed the whole worker (CI, the
  mid-stream takeover test).  The wrapper skips a partition whose position is not known yet
  (or that left the assignment); the next round checks it.  Tested by
  tests/unit/test_compat_livelock.py.
- `consumer_books` (faust-streaming 0.15 `Consumer._committed_offset`, `_read_offset`,
  `_acked`, `_gap`): what Faust's consumer keeps per partition — the offset it committed, the
  last one it read, and the lowest one the agents acked.  The stall watchdog (agents/stall.py)
  and the state dump (stixbus/worker_state.py) read them; there is no public API for them.
  Tested by tests/unit/test_compat_commit.py.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import LeaveGroupRequest
from aiokafka.structs import TopicPartition
from faust import streams as _faust_streams
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import EventT
from taxii2client.common import _HTTPConnection as TaxiiHTTPConnection

__all__ = [
    "RequestHandler",
    "TaxiiHTTPConnection",
    "as_current_event",
    "commit_only_what_was_processed",
    "consumer_books",
    "leave_group_when_stopped",
    "livelock_check_skips_unpositioned",
    "seek_uncommitted_to_start",
    "serve_only",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def serve_only(app: faust.App, paths: Iterable[str]) -> None:
    """Answer 404 on the worker's web server for every path not in `paths` (exact match of
    the route that matched, so `/table/x` and `/healthz/../table` are both refused)."""
    allowed = frozenset(paths)

    @web.middleware
    async def allow_list(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        resource = route.resource if route is not None else None
        if resource is None or resource.canonical not in allowed:
            raise web.HTTPNotFound()
        return await handler(request)

    driver = app.web
    web_app = getattr(driver, "web_app", None)
    if not isinstance(web_app, web.Application):
        raise RuntimeError(
            f"faust web driver {type(driver).__name__} has no aiohttp web_app: the web allow "
            "list (stixbus/kafka/_compat.py) needs updating for this faust version"
        )
    web_app.middlewares.append(allow_list)


_log = logging.getLogger(__name__)


def leave_group_when_stopped() -> None:
    """Make a static member leave its group on a clean stop (idempotent; see the module doc)."""
    original: Any = GroupCoordinator._maybe_leave_group
    if getattr(original, "_stixbus_leaves", False):
        return

    async def maybe_leave_group(self: Any) -> None:
        if self.generation > 0 and self._group_instance_id is not None:
            try:
                await self._send_req(LeaveGroupRequest(self.group_id, self.member_id))
            except KafkaError as exc:
                _log.warning("leaving the consumer group on stop failed: %s", exc)
        await original(self)

    maybe_leave_group._stixbus_leaves = True  # type: ignore[attr-defined]
    GroupCoordinator._maybe_leave_group = maybe_leave_group


def seek_uncommitted_to_start() -> None:
    """After Faust's seek to the committed offsets, seek every stream partition that has no
    committed offset (or 0) to its first offset (idempotent; see the module doc)."""
    original: Any = FaustConsumer.perform_seek
    if getattr(original, "_stixbus_rewinds", False):
        return

    async def perform_seek(self: Any) -> None:
        await original(self)
        uncommitted = sorted(
            tp
            for tp in self.assignment()
            if not self._is_changelog_tp(tp) and self._committed_offset.get(tp) is None
        )
        if uncommitted:
            await self._thread.seek_to_beginning(
                *(TopicPartition(tp.topic, tp.partition) for tp in uncommitted)
            )
            for tp in uncommitted:
                self._read_offset[tp] = None

    perform_seek._stixbus_rewinds = True  # type: ignore[attr-defined]
    FaustConsumer.perform_seek = perform_seek  # type: ignore[method-assign]


def commit_only_what_was_processed() -> None:
    """No gaps on the worker's (hole-free) topics, and no commit over an unacked head offset
    (idempotent; see the module doc)."""
    original_new_offset: Any = FaustConsumer._new_offset
    if getattr(original_new_offset, "_stixbus_strict", False):
        return

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        _log.warning(
            "%s/%s: the consumer skipped from offset %d to %d; they stay uncommitted and are "
            "read again (no gap on a topic without holes)",
            tp.topic,
            tp.partition,
            offset_from,
            offset_to,
        )

    def _new_offset(self: Any, tp: Any) -> int | None:
        acked = self._acked[tp]
        committed = self._committed_offset[tp]
        if acked and committed is not None and min(acked) > committed:
            return None  # the committed offset itself was not processed: nothing to commit
        result: int | None = original_new_offset(self, tp)
        return result

    _new_offset._stixbus_strict = True  # type: ignore[attr-defined]
    FaustConsumer._add_gap = _add_gap  # type: ignore[method-assign]
    FaustConsumer._new_offset = _new_offset  # type: ignore[method-assign]


def livelock_check_skips_unpositioned() -> None:
    """Faust's livelock check passes over partitions aiokafka has no position for yet
    (idempotent; see the module doc)."""
    original: Any = AIOKafkaConsumerThread.verify_event_path
    if getattr(original, "_stixbus_positioned", False):
        return

    def verify_event_path(self: Any, now: float, tp: Any) -> None:
        subscription = self._ensure_consumer()._fetcher._subscriptions.subscription
        assignment = subscription.assignment if subscription is not None else None
        state = None
        if assignment is not None:
            state = assignment.state_value(TopicPartition(tp.topic, tp.partition))
        if state is None or not state.has_valid_position:
            return None  # assigned but not positioned yet (a reset or seek in flight)
        original(self, now, tp)

    verify_event_path._stixbus_positioned = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread.verify_event_path = verify_event_path  # type: ignore[method-assign]


@dataclass(frozen=True)
class ConsumerBook:
    """Faust's bookkeeping of one partition (None: nothing yet)."""

    committed: int | None
    read: int | None
    lowest_acked: int | None
    acked: int
    gaps: int


def consumer_books(consumer: Any, tps: Iterable[Any]) -> dict[Any, ConsumerBook]:
    committed, read = consumer._committed_offset, consumer._read_offset
    acked, gaps = consumer._acked, consumer._gap
    return {
        tp: ConsumerBook(
            committed=committed.get(tp),
            read=read.get(tp),
            lowest_acked=min(acked[tp]) if acked.get(tp) else None,
            acked=len(acked.get(tp) or ()),
            gaps=len(gaps.get(tp) or ()),
        )
        for tp in tps
    }


FAUST_OFFSET_KEY = b"__faust\0offset__"
_TABLE_DB = re.compile(r"(?P<table>.+)-(?P<partition>[0-9]+)\.db")


def faust_persisted_offsets(
    tables_dir: Path,
) -> tuple[dict[tuple[str, int], int], dict[str, str]]:
    """((table, partition) -> last changelog offset applied to the local RocksDB store, for
    every partition folder in `tables_dir` that has one; folder name -> error for those that
    cannot be opened, e.g. corrupt).  Opened read-only; the worker is not running yet."""
    from rocksdict import AccessType, Options, Rdict

    found: dict[tuple[str, int], int] = {}
    broken: dict[str, str] = {}
    for path in sorted(tables_dir.glob("*.db")) if tables_dir.is_dir() else ():
        match = _TABLE_DB.fullmatch(path.name)
        if match is None or not path.is_dir():
            continue
        try:
            db = Rdict(
                str(path), options=Options(raw_mode=True), access_type=AccessType.read_only()
            )
            try:
                raw = db.get(FAUST_OFFSET_KEY)
            finally:
                db.close()
            offset = None if raw is None else int(raw)
        except Exception as exc:  # rocksdict raises plain Exceptions ("Corruption: ...")
            broken[path.name] = " ".join(str(exc).split())[:200]
            continue
        if offset is not None:
            found[(match["table"], int(match["partition"]))] = offset
    return found, broken


class FaustStoreWriter:
    """Writes changelog records into one table partition's local store the way Faust's
    `RocksDBStore.apply_changelog_batch` does (raw key -> raw value, None deletes, then the
    highest applied offset under FAUST_OFFSET_KEY), in large batches without the write-ahead
    log; `close` flushes the memtables to disk."""

    def __init__(self, tables_dir: Path, table: str, partition: int) -> None:
        from rocksdict import Options, Rdict, WriteBatch, WriteOptions

        tables_dir.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(tables_dir / f"{table}-{partition}.db"), options=options)
        self._new_batch = lambda: WriteBatch(raw_mode=True)
        self._batch = self._new_batch()
        self._write = WriteOptions()
        self._write.disable_wal = True  # type: ignore[method-assign,assignment]  # a property
        self._offset: int | None = None

    def apply(self, key: bytes, value: bytes | None, offset: int) -> None:
        if value is None:
            self._batch.delete(key)
        else:
            self._batch.put(key, value)
        self._offset = offset if self._offset is None else max(offset, self._offset)

    def apply_messages(self, messages: Iterable[Any]) -> int:
        """`apply` for librdkafka messages of this partition, in offset order and without
        errors (the caller checks `error()`); returns how many were applied."""
        put, delete = self._batch.put, self._batch.delete
        count, offset = 0, None
        for message in messages:
            value = message.value()
            if value is None:
                delete(message.key() or b"")
            else:
                put(message.key() or b"", value)
            count += 1
            offset = message.offset()
        if offset is not None:
            self._offset = offset if self._offset is None else max(offset, self._offset)
        return count

    def flush(self) -> None:
        if self._offset is None:
            return
        self._batch.put(FAUST_OFFSET_KEY, str(self._offset).encode())
        self._db.write(self._batch, self._write)
        self._batch = self._new_batch()

    def close(self) -> None:
        self.flush()
        self._db.flush()
        self._db.close()


@contextmanager
def as_current_event(event: EventT) -> Iterator[None]:
    """Table writes inside this block belong to `event`'s partition."""
    token = _faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _faust_streams._current_event.reset(token)
