"""claims → normalized: the ownership check, one table keyed (and partitioned) by STIX id.

A version of an id another org owns never reaches dedup and routing (stixbus/core/ownership.py
says why and what happens instead); the owner's conflicting rewrite of a version is
quarantined like dedup's, but across submissions and canonical keys.
"""

from __future__ import annotations

import faust

from schemas.envelope import NormalizedObject
from stixbus import metrics
from stixbus.context import BusContext
from stixbus.core.dedup import conflict_outcome, content_hash
from stixbus.core.ownership import Ownership, Verdict, claim, foreign_letter, minted_ids
from stixbus.kafka.topics import OWNERS_TABLE


def register(app: faust.App, ctx: BusContext) -> None:
    names, registry = ctx.names, ctx.registry
    normalized, deadletter = app.topic(names.normalized), app.topic(names.deadletter)
    receipts = {o.id: app.topic(names.receipts(o.id)) for o in registry.publishers}
    owners = app.Table(
        OWNERS_TABLE, partitions=ctx.settings.partitions, key_type=bytes, value_type=bytes
    )

    @app.agent(app.topic(names.claims), name="stixbus.ownership")
    async def ownership(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            record = NormalizedObject.model_validate_json(event.value)
            key = record.object_id.encode()
            raw = owners.get(key)
            held = Ownership.decode(raw) if raw else None
            bus_minted = record.object_id in minted_ids(registry, record.dedup_key)
            update, verdict = claim(held, record, content_hash(record.object), bus_minted)
            if verdict is Verdict.OWNED:
                await normalized.send(key=record.key.encode(), value=event.value)
            elif verdict is Verdict.CONFLICT:
                receipt, letter = conflict_outcome(record)
                await deadletter.send(key=key, value=letter.model_dump_json().encode())
                await receipts[record.publisher].send(
                    key=record.submission_id.encode(), value=receipt.model_dump_json().encode()
                )
                metrics.observe_rejections(record.publisher, [r.reason for r in receipt.rejections])
            elif verdict is Verdict.FOREIGN:
                letter = foreign_letter(record)
                await deadletter.send(key=key, value=letter.model_dump_json().encode())
                metrics.observe_foreign_id(record.publisher)
            if update is not None:
                owners[key] = update.encode()
