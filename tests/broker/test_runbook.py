"""docs/runbook.md, each case on the real broker: a corrupt local store and local state from a
reset broker (changelog topics created again: the same condition as `kafka.sh reset`) are
rebuilt with one clear log line instead of stopping the worker with Faust's ConsistencyError,
and the rebuilt store (written by stixbus/kafka/bulk_restore.py in Faust's layout) holds the
dedup state: a re-sent indicator is no new version.
A lost worker is tests/broker/test_recovery.py; a lost broker and a full disk are below.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import TopicAlreadyExistsError

from stixbus.kafka.admin import ensure_topics
from stixbus.kafka.topics import DEDUP_TABLE, WORKER_TABLES, changelog_topic
from tests.helpers.bus import Bus
from tests.helpers.recovery import Follower, send, spawn

STALE_LINE = "does not match the broker"


def _rocksdb(bus: Bus) -> None:
    bus.env["STIXBUS_STORE"] = "rocksdb://"  # the production store (tests use memory://)
    bus.env["STIXBUS_BULK_RESTORE_MIN_RECORDS"] = "0"  # rebuilds go through bulk_restore.py


def _tables(bus: Bus) -> Path:
    return bus.home / "worker" / "v1" / "tables"


async def _delivered(bus: Bus, tag: str, timeout: float) -> bool:
    async with Follower(bus, bus.names.deliver("bank-a")) as follower:
        await follower.consumer.seek_to_beginning()
        return await follower.wait_for(tag, timeout) is not None


def _versions(bus: Bus, tag: str) -> set[tuple[str, str]]:
    """Distinct (id, modified) delivered to bank-a for `tag` (consumers drop redeliveries)."""
    needle = f"//{tag}.recovery.example/"
    return {
        (str(o["id"]), str(o.get("modified")))
        for o in bus.objects(bus.names.deliver("bank-a"))
        if o.get("type") == "indicator" and needle in str(o.get("pattern"))
    }


def _start(bus: Bus) -> None:
    spawn(bus)
    bus.wait_ready(60)


def _recreate_changelogs(bus: Bus) -> None:
    app_id = bus.env["STIXBUS_APP_ID"]
    names = [changelog_topic(app_id, t) for t in WORKER_TABLES]
    specs = [s for s in bus.names.all_specs(bus.registry, 2, app_id=app_id) if s.name in names]

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bus.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(names)
        finally:
            await admin.close()
        deadline = time.monotonic() + 30
        while True:  # a deleted topic takes a moment to go
            try:
                if not await ensure_topics(bus.conn, specs) and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    continue
                return
            except TopicAlreadyExistsError:
                await asyncio.sleep(0.5)

    asyncio.run(run())


def test_corrupt_store_and_state_of_a_reset_broker_are_rebuilt(fresh_bus: Bus) -> None:
    bus = fresh_bus
    _rocksdb(bus)
    _start(bus)
    asyncio.run(send(bus, "kept"))
    assert asyncio.run(_delivered(bus, "kept", 60)), bus.log_tail()
    # The key's state reaches its changelog just after the delivery (agents/route.py); a stop
    # in between replays the record with a fresh state, which this test is not about.
    changelog = changelog_topic(bus.env["STIXBUS_APP_ID"], DEDUP_TABLE)
    assert bus.read(changelog, expect=1), "the dedup state never reached its changelog"
    bus.stop(signal.SIGTERM)

    # 1. A corrupt local store: every dedup partition's manifest overwritten.
    damaged = sorted(_tables(bus).glob(f"{DEDUP_TABLE}-*.db"))
    assert damaged, f"no local store under {_tables(bus)}"
    for db in damaged:
        for manifest in db.glob("MANIFEST-*"):
            manifest.write_bytes(b"\0garbage" * 64)
    _start(bus)
    log = bus.log_tail(200)
    assert STALE_LINE in log and "cannot be opened" in log, log
    assert "changelog records into" in log, log  # rebuilt by bulk_restore.py, then Faust
    # Rebuilt from the changelog: the same indicator again is a duplicate, no new version.
    asyncio.run(send(bus, "kept"))
    asyncio.run(send(bus, "after-corruption"))
    assert asyncio.run(_delivered(bus, "after-corruption", 30)), bus.log_tail()
    assert len(_versions(bus, "kept")) == 1, "the rebuilt dedup state forgot 'kept'"
    bus.stop(signal.SIGTERM)

    # 2. The broker lost the changelogs (reset, or topics created again): the local offsets
    #    are ahead of the topics', which Faust refuses with ConsistencyError.
    _recreate_changelogs(bus)
    (bus.home / "worker.log").write_text("")
    _start(bus)
    log = bus.log_tail(200)
    assert "ConsistencyError" not in log, log
    assert log.count(STALE_LINE) == 1 and "created again (topic id" in log, log
    asyncio.run(send(bus, "after-reset"))
    assert asyncio.run(_delivered(bus, "after-reset", 30)), bus.log_tail()
