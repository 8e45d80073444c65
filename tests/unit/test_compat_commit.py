"""Faust commits only offsets the agents processed (stixbus/kafka/_compat.py,
`commit_only_what_was_processed`): no gap over skipped offsets, no commit over an unacked head."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from intervaltree import IntervalTree

from stixbus.kafka import _compat

TOPIC = TP("p.claims", 0)


def _consumer(committed: int | None, acked: list[int]) -> Any:
    fake = SimpleNamespace(
        _acked=defaultdict(list, {TOPIC: list(acked)}),
        _acked_index=defaultdict(set, {TOPIC: set(acked)}),
        _committed_offset=defaultdict(lambda: None, {TOPIC: committed}),
        _gap=defaultdict(IntervalTree),
    )
    return fake


def test_one_unacked_offset_at_the_head_is_not_committed_over() -> None:
    _compat.commit_only_what_was_processed()
    # committed 20 = the next record to process is 20; 21-23 were processed, 20 was not
    assert FaustConsumer._new_offset(_consumer(20, [21, 22, 23]), TOPIC) is None
    assert FaustConsumer._new_offset(_consumer(20, [20, 21, 22]), TOPIC) == 23
    assert FaustConsumer._new_offset(_consumer(None, [0, 1]), TOPIC) == 2


def test_skipped_offsets_are_no_gap_to_commit_over() -> None:
    _compat.commit_only_what_was_processed()
    consumer = _consumer(20, [20, 30, 31])
    asyncio.run(FaustConsumer._add_gap(consumer, TOPIC, 21, 29))  # the consumer jumped 20 -> 30
    assert not consumer._gap[TOPIC]
    assert FaustConsumer._new_offset(consumer, TOPIC) == 21  # 21-29 still to be processed


def test_every_topic_the_agents_consume_has_no_holes() -> None:
    """What makes the no-gap rule safe: delete-policy topics written without transactions."""
    from schemas.org import load_registry
    from stixbus.kafka.topics import TopicNames
    from tests.helpers.paths import ORGS_YAML

    registry = load_registry(ORGS_YAML)
    names = TopicNames("p")
    consumed = {names.ingest(o.id) for o in registry.publishers} | {
        names.claims,
        names.normalized,
        names.ticks,
        names.audit,
        names.feedback,
        names.feedback_sources,
    }
    specs = {s.name: s for s in names.all_specs(registry, 4)}
    assert consumed <= set(specs)
    assert [n for n in sorted(consumed) if specs[n].compacted] == []


def test_the_books_report_committed_read_and_the_lowest_acked() -> None:
    consumer = _consumer(20, [23, 21, 22])
    consumer._read_offset = defaultdict(lambda: None, {TOPIC: 40})
    book = _compat.consumer_books(consumer, [TOPIC])[TOPIC]
    assert (book.committed, book.read, book.lowest_acked, book.acked, book.gaps) == (
        20,
        40,
        21,
        3,
        0,
    )
