"""Topic creation and broker look-ups with aiokafka's admin client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from stixbus.kafka.topics import TopicSpec, topic_configs


async def ensure_topics(
    conn: dict[str, Any],
    specs: list[TopicSpec],
    replication: int = 1,
    min_insync_replicas: int | None = None,
) -> list[str]:
    """Create missing topics with `replication` copies and (when given) `min.insync.replicas`;
    returns the names created.  Existing topics are left as they are."""
    admin = AIOKafkaAdminClient(**conn, request_timeout_ms=15000)
    await _start(admin)
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        new = [
            NewTopic(
                name=s.name,
                num_partitions=s.partitions,
                replication_factor=replication,
                topic_configs=topic_configs(s, min_insync_replicas),
            )
            for s in missing
        ]
        try:
            await admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass  # a concurrent creator won the race: the topics exist, which is all we need
        await _wait_for_leaders(admin, [s.name for s in missing])
        return [s.name for s in missing]
    finally:
        await admin.close()


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, names: list[str], timeout: float = 20.0
) -> None:
    """Created topics are usable once every partition has a leader; clients that come right
    after (agreements apply, the worker) otherwise log NotLeaderForPartition retries."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = await admin.describe_topics(names)
        if all(
            t.get("error_code", 0) == 0
            and t["partitions"]
            and all(p["leader"] >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        await asyncio.sleep(0.2)


async def list_topics(conn: dict[str, Any]) -> list[str]:
    admin = AIOKafkaAdminClient(**conn, request_timeout_ms=15000)
    await _start(admin)
    try:
        return sorted(await admin.list_topics())
    finally:
        await admin.close()


async def _start(admin: AIOKafkaAdminClient) -> None:
    """Start, closing the client when that fails (no unclosed-client warning after the error)."""
    try:
        await admin.start()
    except BaseException:
        await admin.close()
        raise
