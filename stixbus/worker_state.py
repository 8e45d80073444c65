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
from typing import Any

import faust

log = logging.getLogger(__name__)

DUMP_SIGNAL = signal.SIGRTMIN


def install(app: faust.App) -> None:
    signal.signal(DUMP_SIGNAL, lambda _sig, _frame: log_state(app))


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
    committed, read = consumer._committed_offset, consumer._read_offset
    for tp in sorted(consumer.assignment(), key=lambda t: (t.topic, t.partition)):
        if "changelog" in tp.topic:
            continue
        acked = consumer._acked.get(tp) or []
        lines.append(
            f"  {tp.topic}/{tp.partition}: committed={committed.get(tp)} read={read.get(tp)}"
            f" acked={len(acked)}{' min=' + str(min(acked)) if acked else ''}"
            f" gaps={len(consumer._gap.get(tp) or [])}"
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
