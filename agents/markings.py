"""Every worker replays the compacted markings topic: each publisher's marking-definitions
(stixbus/core/marking_memory.py).  Ingest waits for the replay before normalising, so a
remembered marking is never reported unknown after a restart."""

from __future__ import annotations

import asyncio

import faust

from stixbus.context import BusContext
from stixbus.core.marking_memory import MarkingMemory
from stixbus.kafka.config import client_kwargs
from stixbus.kafka.replay import follow


def register(app: faust.App, ctx: BusContext) -> tuple[MarkingMemory, asyncio.Event]:
    memory, loaded = MarkingMemory(), asyncio.Event()

    @app.task
    async def follow_markings() -> None:
        await follow(client_kwargs(ctx.settings), ctx.names.markings, memory.apply, loaded)

    return memory, loaded
