"""Off-loop validation: the CPU-heavy checks of a submission (the official STIX pattern grammar,
the OASIS validator) run in a process pool, under a per-submission time budget.

The ingest agent calls `ValidationPool.normalise` instead of `normalise_submission`:
- first in-process with the heavy checks deferred (`defer_heavy=True`): plain indicators,
  the bulk of the traffic, are decided there at full speed;
- a submission that needs a heavy check runs again whole in a pool process
  (`normalise_submission`, the same pure code), so the event loop keeps serving other
  publishers' partitions and /healthz while it runs;
- past `validation_budget_seconds` the pool process is killed (a running check cannot be
  interrupted otherwise), the pool restarted, and the submission rejected (validation_timeout,
  with its receipt and dead letter); other submissions that shared the killed pool are retried;
- `validation_in_flight_per_publisher` heavy submissions of one publisher at a time, and never
  more than `validation_workers` in the pool, so the budget measures checking, not queueing.

Pool processes are spawned (not forked from a worker running threads and an event loop) and
run each check on a thread with a deep stack and a raised recursion limit: the grammar's
parser recurses once per bracket level and comparison, and patterns within the bounds of
stixbus/core/pattern.py are then parsed instead of failing on Python's default limit.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from schemas.org import Org, Registry
from stixbus.core.normalise import (
    HeavyChecksDeferred,
    NormaliseOutcome,
    normalise_submission,
    over_budget,
)
from stixbus.core.payload import InputLimits

log = logging.getLogger(__name__)

CHILD_RECURSION_LIMIT = 50_000
CHILD_NICENESS = 10
CHILD_STACK_BYTES = 512 * 1024 * 1024  # virtual: only the touched pages are ever allocated


def _init_child() -> None:
    """Pool process start: import the heavy modules once, allow deep recursion."""
    sys.setrecursionlimit(CHILD_RECURSION_LIMIT)
    threading.stack_size(CHILD_STACK_BYTES)
    from stixbus.core.oasis import oasis_errors
    from stixbus.core.pattern import parse_pattern

    # The validator loads its schemas and the grammar builds its tables on first use (about a
    # second): done here, outside any submission's budget.
    parse_pattern("[process:pid = 4 AND process:name = 'x']")
    oasis_errors({"type": "x-warm", "spec_version": "2.1", "id": WARM_ID, "created": WARM_TS,
                  "modified": WARM_TS})  # fmt: skip
    # Started at full priority (a heavy submission waits for the pool), then checks yield
    # the CPU to the worker's event loop (receipts, /healthz).
    os.nice(CHILD_NICENESS)


WARM_ID = "x-warm--00000000-0000-4000-8000-000000000000"
WARM_TS = "2024-01-01T00:00:00.000Z"


def _warm() -> int:
    time.sleep(0.05)  # hold this process so the pool starts the others for their warm task
    return os.getpid()


def _check_in_child(arguments: dict[str, Any]) -> NormaliseOutcome:
    """`normalise_submission` on a deep-stack thread (it never raises)."""
    result: list[NormaliseOutcome] = []
    thread = threading.Thread(target=lambda: result.append(normalise_submission(**arguments)))
    thread.start()
    thread.join()
    return result[0]


def _log_ready(started: float, ready: asyncio.Future[Any]) -> None:
    if not ready.cancelled() and ready.exception() is None:
        log.info("validation pool ready in %.1fs", time.monotonic() - started)


@dataclass
class PoolStats:
    """Counters for tests and logs: what went to the pool and how it ended."""

    heavy: int = 0
    timed_out: int = 0
    retried: int = 0
    restarts: int = 0


class ValidationPool:
    def __init__(self, workers: int, budget_seconds: float, in_flight_per_publisher: int) -> None:
        self.workers = workers
        self.budget_seconds = budget_seconds
        self.in_flight_per_publisher = in_flight_per_publisher
        self.stats = PoolStats()
        self._executor: ProcessPoolExecutor | None = None
        self._ready: asyncio.Future[Any] | None = None
        self._free: asyncio.Semaphore | None = None
        self._starting: asyncio.Future[ProcessPoolExecutor] | None = None
        self._per_publisher: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(self.in_flight_per_publisher)
        )

    async def normalise(
        self,
        raw: bytes,
        publisher: Org,
        registry: Registry,
        limits: InputLimits,
        *,
        submission_id: str,
        received_at: datetime,
        published_at: datetime,
        remembered_markings: frozenset[str] = frozenset(),
    ) -> NormaliseOutcome:
        """`normalise_submission`'s outcome, with the heavy checks off the event loop."""
        arguments: dict[str, Any] = {
            "raw": raw,
            "publisher": publisher,
            "registry": registry,
            "limits": limits,
            "submission_id": submission_id,
            "received_at": received_at,
            "published_at": published_at,
            "remembered_markings": remembered_markings,
        }
        try:
            return normalise_submission(**arguments, defer_heavy=True)
        except HeavyChecksDeferred:
            pass
        self.stats.heavy += 1
        if self._free is None:
            self._free = asyncio.Semaphore(self.workers)
        async with self._per_publisher[publisher.id], self._free:
            for attempt in (1, 2):
                executor = await self._started()
                future = executor.submit(_check_in_child, arguments)
                try:
                    return await asyncio.wait_for(asyncio.wrap_future(future), self.budget_seconds)
                except TimeoutError:
                    self.stats.timed_out += 1
                    log.warning(
                        "submission %s from %s: heavy checks past the %gs budget; rejected "
                        "(validation_timeout), validation pool restarted",
                        submission_id,
                        publisher.id,
                        self.budget_seconds,
                    )
                    self._kill(executor)
                    return over_budget(
                        raw,
                        publisher,
                        registry,
                        limits,
                        submission_id=submission_id,
                        received_at=received_at,
                        published_at=published_at,
                        budget_seconds=self.budget_seconds,
                    )
                except (BrokenProcessPool, asyncio.CancelledError) as exc:
                    task = asyncio.current_task()
                    if isinstance(exc, asyncio.CancelledError) and not (
                        future.cancelled() and task is not None and not task.cancelling()
                    ):
                        raise  # this coroutine is being cancelled, not the pool's work
                    # Another submission's timeout killed the pool under this one (or a pool
                    # process died, or the shutdown cancelled it while queued): check it once
                    # more in a fresh pool.
                    self._kill(executor)
                    self.stats.retried += 1
                    if attempt == 2:
                        break
        # Two broken pools in a row: check it here rather than lose the receipt.
        log.error("submission %s: validation pool broke twice; checking in-process", submission_id)
        return normalise_submission(**arguments)

    async def _started(self) -> ProcessPoolExecutor:
        if self._executor is None:
            context = multiprocessing.get_context("spawn")
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_init_child
            )
            warm: list[Future[int]] = [self._executor.submit(_warm) for _ in range(self.workers)]
            self._ready = asyncio.ensure_future(
                asyncio.gather(*(asyncio.wrap_future(f) for f in warm))
            )
            self._ready.add_done_callback(partial(_log_ready, time.monotonic()))
        executor, ready = self._executor, self._ready
        assert ready is not None
        try:
            await asyncio.shield(ready)  # start-up (imports) is not counted in the budget
        except BrokenProcessPool:
            self._kill(executor)
            return await self._started()
        return executor

    def start(self) -> None:
        """Start the pool processes now (they take a second or two to import the validator)."""
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._started())

    def _kill(self, executor: ProcessPoolExecutor) -> None:
        if self._executor is not executor:
            return  # already replaced by a concurrent failure
        self._executor, self._ready = None, None
        self.stats.restarts += 1
        processes = list(getattr(executor, "_processes", {}).values())
        for process in processes:
            process.kill()
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._executor is not None:
            self._kill(self._executor)


def from_settings(settings: Any) -> ValidationPool:
    return ValidationPool(
        settings.validation_workers,
        settings.validation_budget_seconds,
        settings.validation_in_flight_per_publisher,
    )
