"""normalized → deliver.<org>: the routing stage's shell.

PLACEHOLDER rule from the foundation issue: every subscriber except the publisher gets the object.
"""

from __future__ import annotations

import faust
import orjson

from schemas.envelope import NormalizedObject
from stixbus.context import BusContext


def register(app: faust.App, ctx: BusContext) -> None:
    names = ctx.names
    normalized = app.topic(names.normalized)
    deliver = {o.id: app.topic(names.deliver(o.id)) for o in ctx.registry.subscribers}

    @app.agent(normalized, name="stixbus.route")
    async def route(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            record = NormalizedObject.model_validate_json(value)
            for org_id, topic in deliver.items():
                if org_id == record.publisher:
                    continue
                await topic.send(
                    key=record.object_id.encode(),
                    value=orjson.dumps(record.object),
                    headers=[("stixbus-publisher", record.publisher.encode())],
                )
