"""Every worker follows the compacted agreements topic from the start, so edits apply live.

A group-less consumer (stixbus/kafka/replay.py) reads partition 0 of `stixbus.agreements`: every
worker sees every agreement.
(Faust's GlobalTable can loop forever in recovery with several workers.)
The records are folded in by stixbus/core/agreement_store.py.
"""

from __future__ import annotations

import asyncio

import faust

from stixbus import metrics
from stixbus.context import BusContext
from stixbus.core.agreement_store import AgreementStore
from stixbus.kafka.config import client_kwargs
from stixbus.kafka.replay import Records, follow


def register(app: faust.App, ctx: BusContext) -> tuple[AgreementStore, asyncio.Event]:
    """The store, and an event set once the topic has been replayed to its end (routing waits
    for it: fail closed)."""
    store, loaded = AgreementStore(ctx.registry), asyncio.Event()

    def apply(records: Records) -> None:
        for agreement_id, version in store.apply_batch(records).items():
            if version is None:
                metrics.retire_agreement(agreement_id)
            else:
                metrics.set_agreement_version(agreement_id, version)

    @app.task
    async def follow_agreements() -> None:
        await follow(client_kwargs(ctx.settings), ctx.names.agreements, apply, loaded)

    return store, loaded
