"""stixbus/kafka/_compat.py `seek_uncommitted_to_start`: after Faust's seek to the committed
offsets, stream partitions without a committed offset are sought to their start (so records a
rebalance dropped from a fetched batch are read again), changelog partitions are left alone."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from aiokafka.structs import TopicPartition
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP

from stixbus.kafka import _compat

CHANGELOG = "app-stixbus-dedup-changelog"


class _Thread:
    def __init__(self, committed: dict[TP, int | None]) -> None:
        self.committed = committed
        self.to_beginning: list[TopicPartition] = []

    async def seek_to_committed(self) -> dict[TP, int | None]:
        return dict(self.committed)

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.to_beginning.extend(partitions)


class _Consumer:
    """Just what Faust's `Consumer.perform_seek` and the wrapper touch."""

    def __init__(self, committed: dict[TP, int | None]) -> None:
        self._thread = _Thread(committed)
        self._read_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self._committed_offset: dict[TP, int | None] = defaultdict(lambda: None)

    async def seek_to_committed(self) -> dict[TP, int | None]:
        return await self._thread.seek_to_committed()

    def assignment(self) -> set[TP]:
        return set(self._thread.committed)

    def _is_changelog_tp(self, tp: TP) -> bool:
        return tp.topic == CHANGELOG


def _seek(committed: dict[TP, int | None]) -> list[TopicPartition]:
    _compat.seek_uncommitted_to_start()
    consumer: Any = _Consumer(committed)
    asyncio.run(FaustConsumer.perform_seek(consumer))
    return sorted(consumer._thread.to_beginning)


def test_partitions_without_a_commit_or_at_0_go_back_to_their_start() -> None:
    never, zero, done = TP("p.ingest.cert", 0), TP("p.ingest.cert", 1), TP("p.claims", 0)
    rewound = _seek({never: None, zero: 0, done: 42})
    assert rewound == [TopicPartition("p.ingest.cert", 0), TopicPartition("p.ingest.cert", 1)]


def test_changelog_partitions_keep_the_position_recovery_gave_them() -> None:
    assert _seek({TP(CHANGELOG, 0): None, TP(CHANGELOG, 1): 7}) == []


def test_installing_twice_wraps_once() -> None:
    _compat.seek_uncommitted_to_start()
    first = FaustConsumer.perform_seek
    _compat.seek_uncommitted_to_start()
    assert FaustConsumer.perform_seek is first
