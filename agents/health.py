"""/healthz (process up) and /readyz (broker answering, partitions assigned, recovery done)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.web import Request, Response, View

from stixbus.context import BusContext

BROKER_CHECK_SECONDS = 3.0
# /readyz answers within this even when the broker round trip takes longer (issue 17: an
# orchestrator's probe must always get an answer): the slow probe keeps running and the answer
# is the last one that completed.
READY_ANSWER_SECONDS = 0.1


def register(app: faust.App, ctx: BusContext) -> None:
    probe: dict[str, Any] = {"task": None, "last": False}  # the broker probe in flight, last answer

    @app.page("/healthz")
    class Healthz(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class Readyz(View):
        async def get(self, request: Request) -> Response:
            assigned = app.consumer.assignment() if app.consumer else set()
            recovered = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
            broker = await _broker_answers(app, probe)
            ready = bool(assigned) and recovered and not app.rebalancing and broker
            body = {
                "ready": ready,
                "broker_reachable": broker,
                "assigned_partitions": len(assigned),
                "recovery_completed": recovered,
                "rebalancing": app.rebalancing,
            }
            return self.json(body, status=200 if ready else 503)


async def _broker_answers(app: faust.App, probe: dict[str, Any]) -> bool:
    """The broker probe's answer if it comes within READY_ANSWER_SECONDS, else the last
    completed probe's (one probe at a time)."""
    task = probe["task"]
    if task is None or task.done():
        task = probe["task"] = asyncio.ensure_future(_probe_broker(app))
        task.add_done_callback(lambda done: probe.update(last=done.result()))
    try:
        return await asyncio.wait_for(asyncio.shield(task), READY_ANSWER_SECONDS)
    except TimeoutError:
        return bool(probe["last"])


async def _probe_broker(app: faust.App) -> bool:
    """A metadata round trip on the worker's own producer connection (a lost broker after
    start would otherwise leave the worker 'ready' with nothing flowing)."""
    try:
        producer = app.producer._ensure_producer()  # type: ignore[attr-defined]
        await asyncio.wait_for(producer.client.fetch_all_metadata(), BROKER_CHECK_SECONDS)
        return True
    except Exception:
        return False
