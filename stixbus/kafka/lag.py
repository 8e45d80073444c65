"""Subscriber consumer lag, sampled from the broker.

Lag of subscriber `<org>` = Σ over partitions of `stixbus.deliver.<org>`: end offset minus the
offset committed by the subscriber's consumer group. A partition the group never committed
counts from the log start offset (everything still retained there is unread).

Subscriber consumer groups follow a convention, `<prefix>.<org>` by default (for example
`stixbus.bank-a`); `STIXBUS_OBSERVE_SUBSCRIBER_GROUP` changes it (a format string with `{prefix}`
and `{org}`). Used by the worker's lag timer (agents/observe.py) and by `stixbus status`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stixbus.kafka.admin import ClusterAdmin, admin_client
from stixbus.kafka.topics import TopicNames


class ObserveSettings(BaseSettings):
    """Observability knobs (environment variables prefixed STIXBUS_OBSERVE_)."""

    model_config = SettingsConfigDict(env_prefix="STIXBUS_OBSERVE_")

    lag_interval_seconds: float = Field(
        default=15.0, gt=0, description="How often the worker samples subscriber lag"
    )
    subscriber_group: str = Field(
        default="{prefix}.{org}",
        description="Consumer group of each subscriber, a format string with {prefix} and {org}",
    )


def subscriber_group(template: str, prefix: str, org: str) -> str:
    return template.format(prefix=prefix, org=org)


class LagSampler:
    """Long-lived admin client + offsets-only consumer; `sample()` returns lag per subscriber."""

    def __init__(
        self,
        conn: dict[str, Any],
        names: TopicNames,
        subscribers: list[str],
        group_template: str = "{prefix}.{org}",
        timeout: float = 10.0,
    ) -> None:
        self._conn = conn
        self._names = names
        self._subscribers = subscribers
        self._template = group_template
        self._timeout = timeout
        self._admin: ClusterAdmin | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: dict[str, list[TopicPartition]] = {}

    async def start(self) -> None:
        timeout_ms = int(self._timeout * 1000)
        self._admin = admin_client(self._conn, timeout_ms)
        await self._admin.start()
        self._consumer = AIOKafkaConsumer(
            **self._conn, enable_auto_commit=False, request_timeout_ms=timeout_ms
        )
        await self._consumer.start()

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def __aenter__(self) -> LagSampler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _topic_partitions(self) -> dict[str, list[TopicPartition]]:
        assert self._admin is not None
        topics = [self._names.deliver(org) for org in self._subscribers]
        missing = [t for t in topics if t not in self._partitions]
        if missing:
            existing = set(await self._admin.list_topics())
            wanted = [t for t in missing if t in existing]
            if wanted:
                for desc in await self._admin.describe_topics(wanted):
                    if desc.get("error_code"):
                        continue
                    self._partitions[desc["topic"]] = [
                        TopicPartition(desc["topic"], p["partition"]) for p in desc["partitions"]
                    ]
        return self._partitions

    async def sample(self) -> dict[str, int | None]:
        """Lag per subscriber org; None when its delivery topic does not exist."""
        return await asyncio.wait_for(self._sample(), self._timeout * 2)

    async def _sample(self) -> dict[str, int | None]:
        if self._admin is None or self._consumer is None:
            await self.start()
        assert self._admin is not None and self._consumer is not None
        partitions = await self._topic_partitions()
        all_tps = [tp for tps in partitions.values() for tp in tps]
        if not all_tps:
            return dict.fromkeys(self._subscribers)
        end = await self._consumer.end_offsets(all_tps)
        start = await self._consumer.beginning_offsets(all_tps)
        orgs = [o for o in self._subscribers if partitions.get(self._names.deliver(o))]
        committed = await asyncio.gather(
            *(
                self._admin.list_consumer_group_offsets(
                    subscriber_group(self._template, self._names.prefix, org),
                    partitions=partitions[self._names.deliver(org)],
                )
                for org in orgs
            )
        )
        lags: dict[str, int | None] = dict.fromkeys(self._subscribers)
        for org, offsets in zip(orgs, committed, strict=True):
            total = 0
            for tp in partitions[self._names.deliver(org)]:
                meta = offsets.get(tp)
                position = meta.offset if meta is not None and meta.offset >= 0 else start[tp]
                total += max(end[tp] - max(position, start[tp]), 0)
            lags[org] = total
        return lags


async def sample_once(
    conn: dict[str, Any], names: TopicNames, subscribers: list[str], group_template: str
) -> dict[str, int | None]:
    async with LagSampler(conn, names, subscribers, group_template) as sampler:
        return await sampler.sample()
