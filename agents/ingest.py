"""ingest.<org> → normalized + receipts.<org> (+ deadletter): the normalise stage's shell."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import faust

from schemas.envelope import SUBMISSION_HEADER
from stixbus import metrics
from stixbus.context import BusContext
from stixbus.core.deadletter import bounded
from stixbus.core.normalise import normalise_submission


def register(app: faust.App, ctx: BusContext) -> None:
    names = ctx.names
    ingest = app.topic(*(names.ingest(o.id) for o in ctx.registry.publishers))
    normalized = app.topic(names.normalized)
    deadletter = app.topic(names.deadletter)
    receipts = {o.id: app.topic(names.receipts(o.id)) for o in ctx.registry.publishers}

    @app.agent(ingest, name="stixbus.core.normalise")
    async def normalise(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            publisher = ctx.registry.get(names.org_of_ingest(message.topic))
            headers = dict(message.headers or [])
            submission_id = _submission_id(headers.get(SUBMISSION_HEADER))
            raw = bytes(event.value or b"")
            outcome = normalise_submission(
                raw,
                publisher,
                ctx.registry,
                ctx.settings.limits,
                submission_id=submission_id,
                received_at=datetime.now(UTC),
                published_at=datetime.fromtimestamp(message.timestamp, UTC),
            )
            receipt = outcome.receipt
            metrics.observe_submission(publisher.id, receipt.accepted + receipt.rejected)
            metrics.observe_rejections(publisher.id, (r.reason for r in receipt.rejections))
            for record in outcome.accepted:
                await normalized.send(
                    key=record.key.encode(), value=record.model_dump_json().encode()
                )
            if outcome.dead_letter is not None:
                # An input over the ingest limit keeps only its head, size and sha256: verbatim
                # it may not fit any record, and the receipt below must still go out.
                letter = bounded(
                    outcome.dead_letter, raw, ctx.settings.limits.message_bytes
                ).model_copy(
                    update={
                        "source_topic": message.topic,
                        "source_partition": message.partition,
                        "source_offset": message.offset,
                    }
                )
                await deadletter.send(
                    key=submission_id.encode(), value=letter.model_dump_json().encode()
                )
            await receipts[publisher.id].send(
                key=submission_id.encode(), value=receipt.model_dump_json().encode()
            )


def _submission_id(header: bytes | None) -> str:
    """The publisher's submission id when it sent a sane one, else a fresh one."""
    if header:
        text = header.decode("utf-8", "replace")
        if 0 < len(text) <= 128 and text.isprintable():
            return text
    return str(uuid.uuid4())
