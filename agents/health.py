"""/healthz (process up) and /readyz (broker connected, partitions assigned, recovery done)."""

from __future__ import annotations

import faust
from faust.web import Request, Response, View

from stixbus.context import BusContext


def register(app: faust.App, ctx: BusContext) -> None:
    @app.page("/healthz")
    class Healthz(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class Readyz(View):
        async def get(self, request: Request) -> Response:
            assigned = app.consumer.assignment() if app.consumer else set()
            recovered = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
            ready = bool(assigned) and recovered and not app.rebalancing
            body = {
                "ready": ready,
                "assigned_partitions": len(assigned),
                "recovery_completed": recovered,
                "rebalancing": app.rebalancing,
            }
            return self.json(body, status=200 if ready else 503)
