"""Durable current state: a subscriber away longer than every delete-policy retention still
gets exactly its current set, revocations included, from a fresh TAXII server.

Retention here is 2 s (segments roll every second, the cleaner runs every 2 s on the local
broker) instead of days: the ingest and pipeline topics lose their records, the compacted
delivery topic keeps the latest version of each object.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.helpers.bus import make_bus
from tests.helpers.dedup_samples import indicator, version
from tests.helpers.taxii import TaxiiServer

SHORT = {
    "STIXBUS_RETENTION_INGEST_SECONDS": "2",
    "STIXBUS_RETENTION_RECEIPTS_SECONDS": "2",
    "STIXBUS_RETENTION_PIPELINE_SECONDS": "2",
    "STIXBUS_RETENTION_SEGMENT_SECONDS": "1",
    "STIXBUS_RETENTION_COMPACTION_DIRTY_RATIO": "0.01",
}


def earliest(bootstrap: str, topic: str, partitions: int) -> int:
    async def go() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            return sum((await consumer.beginning_offsets(tps)).values())
        finally:
            await consumer.stop()

    return asyncio.run(go())


def test_subscriber_away_past_retention_gets_its_current_set(bootstrap: str, tmp_path: Path):
    bus = make_bus(bootstrap, tmp_path, **SHORT)
    bus.start()
    try:
        sent = [indicator(f"[url:value = 'http://gone-{uuid.uuid4().hex[:10]}.example/']")
                for _ in range(12)]  # fmt: skip
        bus.publish("cert", {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": sent})
        deliver = bus.names.deliver("bank-a")
        bus.read(deliver, expect=12, timeout=60)
        time.sleep(1.2)  # the revocations land in a later segment than the first versions
        revoked = sent[:4]
        bus.publish(
            "cert",
            {
                "type": "bundle",
                "id": f"bundle--{uuid.uuid4()}",
                "objects": [version(o, "2026-05-02T00:00:00.000Z", revoked=True) for o in revoked],
            },
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            objects = bus.objects(deliver)
            if sum(1 for o in objects if o.get("revoked")) >= 4:
                break
            time.sleep(0.5)
        versions_written = len([o for o in bus.objects(deliver) if o.get("type") == "indicator"])
        assert versions_written >= 16
        # Time passes: the ingest topic's records go (its old retention would have taken the
        # delivery topic's with them); the delivery topic is compacted to one record per id.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            time.sleep(2)
            bus.publish("cert", indicator(f"[url:value = 'http://roll-{uuid.uuid4().hex}.e/']"))
            kept = [o for o in bus.objects(deliver) if o.get("type") == "indicator"]
            by_id: dict[str, int] = {}
            for o in kept:
                by_id[o["id"]] = by_id.get(o["id"], 0) + 1
            compacted = all(n == 1 for n in by_id.values())
            if (
                earliest(bootstrap, bus.names.ingest("cert"), int(bus.env["STIXBUS_PARTITIONS"]))
                > 0
                and compacted
            ):
                break
        else:
            raise AssertionError("the broker neither expired the ingest topic nor compacted")

        server = TaxiiServer(bus)
        server.add("bank-a")
        server.start()
        try:
            url = server.collection("bank-a") + "objects/"
            got: list[dict[str, Any]] = []
            params: dict[str, str] = {"match[type]": "indicator", "limit": "5"}
            while True:
                body = server.get(url, "bank-a", params=params).json()
                got += body.get("objects", [])
                if not body.get("more"):
                    break
                params = {**params, "next": body["next"]}
        finally:
            server.stop()
        patterns = {o["pattern"]: o for o in got}
        assert {o["pattern"] for o in sent} <= set(patterns), "the whole current set"
        assert len(got) == len({o["id"] for o in got}), "one (latest) version per object"
        assert {p for p, o in patterns.items() if o.get("revoked")} == {
            o["pattern"] for o in revoked
        }, "exactly the revocations"
    finally:
        bus.stop()
