"""Replication settings: documented defaults, the derived min.insync.replicas, and refusal of a
combination under which no write could succeed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stixbus.kafka.topics import TopicSpec, topic_configs
from stixbus.settings import Settings


def settings(**fields: object) -> Settings:
    return Settings(_env_prefix="STIXBUS_TEST_NOTHING_", _env_file=None, **fields)  # type: ignore[arg-type]


def test_single_broker_defaults() -> None:
    s = settings()
    assert (s.replication_factor, s.insync_replicas, s.table_standby_replicas) == (1, 1, 1)


@pytest.mark.parametrize(("rf", "isr"), [(1, 1), (2, 1), (3, 2), (5, 2)])
def test_insync_default_follows_replication(rf: int, isr: int) -> None:
    assert settings(replication_factor=rf).insync_replicas == isr


def test_explicit_insync_wins() -> None:
    assert settings(replication_factor=3, min_insync_replicas=3).insync_replicas == 3


def test_insync_above_replication_is_refused_with_advice() -> None:
    with pytest.raises(ValidationError, match="STIXBUS_MIN_INSYNC_REPLICAS"):
        settings(replication_factor=1, min_insync_replicas=2)


def test_topic_configs_carry_insync_only_when_given() -> None:
    spec = TopicSpec("t", 2, compacted=True, max_message_bytes=10)
    assert topic_configs(spec) == {"cleanup.policy": "compact", "max.message.bytes": "10"}
    assert topic_configs(spec, 2)["min.insync.replicas"] == "2"
