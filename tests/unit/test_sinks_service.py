"""The sink's follow-and-render loop (egress/sinks/service.py) without a broker: the topic
reader is replaced by a scripted one, so the race a real broker hits only under load is
deterministic here: records that arrive while a render runs must be rendered next, promptly."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from egress.sinks import service
from egress.sinks.service import Follower, run_follower
from egress.sinks.subscriber import Outcome, Safety, SubscriberSink
from schemas.sinks import Format, SubscriberSinks
from tests.helpers.stix_samples import numbered_domain_indicator


def record(name: str, n: int) -> tuple[bytes, bytes]:
    obj = numbered_domain_indicator(name, n)
    return obj["id"].encode(), orjson.dumps(obj)


def test_records_arriving_during_a_render_are_rendered_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = SubscriberSink(
        SubscriberSinks(org="isp-one", formats=(Format.EDL,)), tmp_path, Safety(enabled=False)
    )
    slow_publish = sink.publish
    rendering = asyncio.Event()

    def publish(now: Any = None) -> Outcome:
        loop.call_soon_threadsafe(rendering.set)
        time.sleep(0.5)  # a big list
        return slow_publish(now)

    monkeypatch.setattr(sink, "publish", publish)

    async def scripted(conn: Any, topic: str, apply: Any, loaded: asyncio.Event, **_: Any) -> None:
        apply([record("first.example", 1)])
        loaded.set()
        await rendering.wait()  # the first render is running: a record arrives now
        apply([record("second.example", 2)])
        await asyncio.sleep(3600)

    monkeypatch.setattr(service, "follow_all", scripted)
    follower = Follower(sink, "t.deliver.isp-one", asyncio.Event(), asyncio.Event())
    domains = tmp_path / "isp-one" / "domains.txt"

    async def main() -> float:
        task = asyncio.create_task(run_follower(follower, {}, 0.05, 1 << 20))
        started = time.monotonic()
        try:
            while time.monotonic() - started < 10:
                if domains.exists() and "second.example" in domains.read_text():
                    return time.monotonic() - started
                await asyncio.sleep(0.05)
            raise AssertionError(f"second record never rendered: {domains.read_text()!r}")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    loop = asyncio.new_event_loop()
    try:
        took = loop.run_until_complete(main())
    finally:
        loop.close()
    assert domains.read_text() == "first.example\nsecond.example\n"
    assert took < 3  # not at the 60 s idle wake-up
