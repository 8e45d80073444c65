"""`stixbus sinks serve`: follow each subscriber's delivery topic from the beginning (no
consumer group: every sink process reads everything), re-render on change (debounced) and at
the next expiry, write the files and serve RPZ transfers and the HTTPS lists.

A subscriber's sinks publish nothing until its topic has been read up to the end it had at
start (a half-read topic would look like a mass revocation); until then the files and the
zone of the previous run stay in place and are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from egress.sinks.subscriber import Safety, SubscriberSink
from schemas.sinks import SinksConfig, SubscriberSinks
from stixbus.kafka.replay import Records, follow_all

log = logging.getLogger("stixbus.sinks")

MAX_SLEEP_SECONDS = 60.0


@dataclass
class Follower:
    sink: SubscriberSink
    topic: str
    changed: asyncio.Event
    loaded: asyncio.Event


def build_sinks(
    orgs: list[str],
    config: SinksConfig,
    root: Path,
    safety: Safety,
    on_new_serial: Callable[[SubscriberSinks, int], None] | None = None,
) -> dict[str, SubscriberSink]:
    return {
        org: SubscriberSink(config.for_org(org), root, safety, on_new_serial) for org in orgs
    }


async def run_follower(
    follower: Follower,
    conn: dict[str, Any],
    debounce: float,
    max_record_bytes: int,
) -> None:
    """Read the topic into the sink and publish on change, for ever."""

    # A render runs in a thread (a 1M-entry list takes seconds; the servers keep answering
    # meanwhile); records that arrive during it wait here, so the thread reads a still set.
    held_back: list[Records] = []
    rendering = False

    def apply(records: Records) -> None:
        if not records:
            return
        if rendering:
            held_back.append(records)
            follower.changed.set()
        elif follower.sink.apply_records(records):
            follower.changed.set()

    reader = asyncio.create_task(
        follow_all(conn, follower.topic, apply, follower.loaded, max_record_bytes=max_record_bytes)
    )
    try:
        await _wait_either(reader, follower.loaded.wait())
        sink = follower.sink
        due: datetime | None = None
        while True:
            follower.changed.clear()  # before looking: a record after this sets it again
            now = datetime.now(UTC)
            if sink.rendered_version != sink.current.version or (due is not None and now >= due):
                rendering = True
                try:
                    outcome = await asyncio.to_thread(sink.publish, now)
                finally:
                    rendering = False
                    for records in held_back:
                        sink.apply_records(records)
                    held_back.clear()
                if outcome.written:
                    log.info("%s: wrote %s", sink.config.org, ", ".join(outcome.written))
                due = sink.current.next_change(now)
                if outcome.held and sink.safety.hold_seconds > 0:  # look again when it may go
                    release = now + timedelta(seconds=sink.safety.hold_seconds)
                    due = release if due is None else min(due, release)
            if sink.rendered_version != sink.current.version:  # arrived during the render
                await asyncio.sleep(debounce)
                continue
            timeout = MAX_SLEEP_SECONDS
            if due is not None:
                timeout = min(timeout, max((due - datetime.now(UTC)).total_seconds(), 0.0))
            with contextlib.suppress(TimeoutError):
                await _wait_either(reader, asyncio.wait_for(follower.changed.wait(), timeout))
            if follower.changed.is_set() and debounce:
                await asyncio.sleep(debounce)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


async def _wait_either(reader: asyncio.Task[None], awaitable: Any) -> None:
    """Await `awaitable`, but fail at once if the topic reader died (its error is the cause)."""
    waiter = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if reader in done:
        waiter.cancel()
        reader.result()  # raises the reader's error
        raise RuntimeError(f"the reader of {reader.get_name()} stopped")
    waiter.result()
