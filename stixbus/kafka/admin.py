"""Topic creation and broker look-ups with aiokafka's admin client."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from stixbus.kafka.topics import TopicSpec, topic_configs


class ClusterAdmin(AIOKafkaAdminClient):
    """aiokafka's admin client, but a request for "any broker" goes to one that answers.

    aiokafka sends such requests (list topics, describe, quotas) to a random broker of the
    metadata, dead or alive: with one broker of a cluster down, one call in three failed with
    `NodeNotReadyError`, and a worker started at that moment died in its topic check
    (tests/broker/test_cluster_failover.py, worker-kill variant)."""

    async def _send_request(self, request: Any, node_id: int | None = None) -> Any:
        if node_id is None:
            node_id = await self._ready_node()
        return await self._client.send(node_id, request)

    async def _ready_node(self) -> int | None:
        nodes = [b.nodeId for b in self._client.cluster.brokers()]
        random.shuffle(nodes)
        for node in nodes:
            if await self._client.ready(node):
                return node
        return nodes[0] if nodes else None  # none answers: let send() raise its own error


def admin_client(conn: dict[str, Any], request_timeout_ms: int = 15000) -> ClusterAdmin:
    return ClusterAdmin(**conn, request_timeout_ms=request_timeout_ms)


async def ensure_topics(
    conn: dict[str, Any],
    specs: list[TopicSpec],
    replication: int = 1,
    min_insync_replicas: int | None = None,
) -> list[str]:
    """Create missing topics with `replication` copies and (when given) `min.insync.replicas`;
    returns the names created.  Existing topics get the configs of their spec (cleanup policy,
    retention...) when theirs differ: an upgraded bus turns its delivery topics compacted (their
    partition count is left as it is)."""
    admin = admin_client(conn)
    await _start(admin)
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        await _reconcile_configs(
            admin, [s for s in specs if s.name in existing], min_insync_replicas
        )
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


async def _reconcile_configs(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], min_insync_replicas: int | None
) -> None:
    if not specs:
        return
    resources = [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
    current: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for _error, _message, _type, name, entries in response.resources:
            current[name] = {entry[0]: entry[1] for entry in entries}
    stale = [
        ConfigResource(ConfigResourceType.TOPIC, s.name, topic_configs(s, min_insync_replicas))
        for s in specs
        if any(
            current.get(s.name, {}).get(k) != v
            for k, v in topic_configs(s, min_insync_replicas).items()
        )
    ]
    if stale:
        await admin.alter_configs(stale)


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
    admin = admin_client(conn)
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
