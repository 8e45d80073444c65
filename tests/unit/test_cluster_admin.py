"""Admin requests for "any broker" go to one that answers (stixbus/kafka/admin.py).

aiokafka picks a random broker of the metadata, dead or alive; with one broker of a cluster
down a worker died in its start-up topic check with NodeNotReadyError.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from stixbus.kafka.admin import admin_client


@dataclass
class _Broker:
    nodeId: int  # aiokafka's name


@dataclass
class _Cluster:
    nodes: list[int]

    def brokers(self) -> list[_Broker]:
        return [_Broker(n) for n in self.nodes]


@dataclass
class _Client:
    """aiokafka's client as the admin uses it: the metadata, `ready` and `send`."""

    alive: set[int]
    cluster: _Cluster
    sent_to: list[int] = field(default_factory=list)

    async def ready(self, node_id: int) -> bool:
        return node_id in self.alive

    async def send(self, node_id: int, request: Any) -> str:
        if node_id not in self.alive:
            raise ConnectionError(f"node {node_id} is down")  # what aiokafka's NodeNotReady is
        self.sent_to.append(node_id)
        return "response"


def test_a_request_for_any_broker_skips_the_dead_ones() -> None:
    client = _Client(alive={2}, cluster=_Cluster([1, 2, 3]))

    async def many() -> list[Any]:
        admin = admin_client({"bootstrap_servers": "127.0.0.1:9"})
        admin._client = client
        return [await admin._send_request(object()) for _ in range(40)]

    assert asyncio.run(many()) == ["response"] * 40  # a random pick fails 2 in 3 of these
    assert set(client.sent_to) == {2}


def test_a_request_for_a_named_broker_goes_there() -> None:
    client = _Client(alive={1, 3}, cluster=_Cluster([1, 2, 3]))

    async def one() -> None:
        admin = admin_client({"bootstrap_servers": "127.0.0.1:9"})
        admin._client = client
        await admin._send_request(object(), node_id=3)

    asyncio.run(one())
    assert client.sent_to == [3]
