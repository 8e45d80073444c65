"""`kill -s RTMIN <worker pid>`: the worker logs where its consumer and agents stand.

For a stalled worker (docs/runbook.md, "A stalled worker"): mode's SIGUSR1 dump lists tasks,
but not the async generators Faust's streams suspend in, nor the consumer's partition
bookkeeping, which is where a stalled partition shows.  (Not SIGUSR2: mode enters a debugger
on it.)  The stall watchdog (agents/stall.py) logs the same before it stops the worker.
"""

from __future__ import annotations

import gc
import inspect
import logging
import signal
import time
from typing import Any

import faust
from faust.sensors import Sensor

from stixbus.kafka._compat import consumer_books

log = logging.getLogger(__name__)

DUMP_SIGNAL = signal.SIGRTMIN


def install(app: faust.App) -> None:
    signal.signal(DUMP_SIGNAL, lambda _sig, _frame: log_state(app))
    app.sensors.add(SkippedEvents())


def log_state(app: faust.App, level: int = logging.WARNING) -> None:
    try:
        log.log(level, "%s", describe(app))
    except Exception as exc:  # a diagnostic must never take the worker down
        log.log(level, "worker state unavailable: %r", exc)


def _tps(tps: Any) -> str:
    return ", ".join(sorted(f"{tp.topic.split('.')[-1]}/{tp.partition}" for tp in tps or ()))


def describe(app: faust.App) -> str:
    lines = [
        f"worker state: rebalancing={app.rebalancing} flow_control={app.flow_control.is_active()}"
        f" generation={app.consumer_generation_id} in_recovery={app.in_recovery}"
    ]
    consumer: Any = app.consumer
    for name in ("_active_partitions", "_paused_partitions", "_buffered_partitions"):
        lines.append(f"  consumer.{name}: {_tps(getattr(consumer, name, None))}")
    lines.append(f"  consumer flow_active={getattr(consumer, 'flow_active', '?')}")
    tps = sorted(consumer.assignment(), key=lambda t: (t.topic, t.partition))
    for tp, book in consumer_books(
        consumer, [t for t in tps if "changelog" not in t.topic]
    ).items():
        lowest = f" min={book.lowest_acked}" if book.lowest_acked is not None else ""
        lines.append(
            f"  {tp.topic}/{tp.partition}: committed={book.committed} read={book.read}"
            f" acked={book.acked}{lowest} gaps={book.gaps}"
        )
    for agent in app.agents.values():
        for actor in getattr(agent, "_actors", []):
            stream = getattr(actor, "stream", None)
            queue = getattr(getattr(stream, "channel", None), "queue", None)
            lines.append(
                f"  agent {agent.name}: actor {getattr(actor, 'active_partitions', None)} "
                f"queue={queue.qsize() if queue is not None else '?'}"
            )
    for gen in (o for o in gc.get_objects() if inspect.isasyncgen(o)):
        frame = gen.ag_frame
        if frame is None or "site-packages/faust" not in frame.f_code.co_filename:
            continue
        awaiting = gen.ag_await
        lines.append(
            f"  async generator {gen.ag_code.co_qualname} at line {frame.f_lineno} "
            f"running={gen.ag_running} awaits={type(awaiting).__name__ if awaiting else None}"
        )
    return "\n".join(lines)


class SkippedEvents(Sensor):
    """Logs records Faust acked without handing them to the agent.

    Faust's stream iterator drops a record when flow control is suspended or the record was
    fetched in an older consumer generation, and acks it all the same (faust/streams.py,
    `skipped_value`).  After a rebalance the seek to the committed offsets reads such records
    again; if a commit gets past them first they are never processed.  The chaos run that kills
    a worker with a broker lost records that way, or so it seems (docs/runbook.md): this line
    says when it happens.  At most one line per second, folding the offsets per partition."""

    def __init__(self) -> None:
        super().__init__()
        self._in: set[tuple[int, Any, int]] = set()
        self._skipped: dict[Any, list[int]] = {}
        self._logged_at = 0.0

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        self._in.add((id(stream), tp, offset))

    def on_stream_event_out(
        self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None
    ) -> None:
        key = (id(stream), tp, offset)
        if key in self._in:
            self._in.discard(key)
            return
        seen = self._skipped.setdefault(tp, [offset, offset, 0])
        seen[0], seen[1], seen[2] = min(seen[0], offset), max(seen[1], offset), seen[2] + 1
        now = time.monotonic()
        if now - self._logged_at >= 1.0:
            self._logged_at = now
            folded = "; ".join(
                f"{t.topic}/{t.partition} offsets {lo}-{hi} ({n})"
                for t, (lo, hi, n) in self._skipped.items()
            )
            self._skipped = {}
            log.warning(
                "Faust acked records without handing them to the agent (flow control "
                "suspended or an older consumer generation): %s; they are processed only if "
                "the partition is read again from an offset below them",
                folded,
            )
