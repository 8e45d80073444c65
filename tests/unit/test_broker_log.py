"""The worker's rate-limited, plain-words line for an unreachable broker (stixbus/broker_log.py)."""

from __future__ import annotations

import logging

import pytest

from stixbus.broker_log import BrokerOutageFilter, install


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("aiokafka.conn", level, __file__, 1, msg, args, None)


NOISE: list[tuple[str, tuple[object, ...]]] = [
    ("Unable connect to node with id %s: %s", (1, "[Errno 111] Connect call failed")),
    ("Unable to update metadata from %s", ([1],)),
    ("Failed fetch messages from %s: %s", (1, "NodeNotReadyError: Attempt to send a request")),
]


def test_an_outage_is_one_plain_line_per_interval() -> None:
    clock = Clock()
    outage = BrokerOutageFilter("127.0.0.1:9092", interval=30, clock=clock)
    passed: list[str] = []
    for second in range(65):  # 65 s of the ~700 lines/s aiokafka writes, 3 per second here
        clock.now = 1000.0 + second
        for msg, args in NOISE:
            record = _record(msg, *args)
            if outage.filter(record):
                passed.append(record.getMessage())
    assert len(passed) == 3  # at 0 s, 30 s and 60 s
    assert all(p.startswith("Kafka broker unreachable at 127.0.0.1:9092") for p in passed)
    assert "(90 Kafka client error(s) in 30 s" in passed[1], passed[1]
    assert "STIXBUS_BOOTSTRAP_SERVERS" in passed[0]


def test_other_records_pass_untouched() -> None:
    outage = BrokerOutageFilter("k:9092", clock=Clock())
    info = _record("Unable connect to node 1", level=logging.INFO)  # below WARNING: not ours
    other = _record("Heartbeat failed: %s", "RebalanceInProgressError")
    assert outage.filter(info) and info.getMessage() == "Unable connect to node 1"
    assert outage.filter(other) and other.getMessage().startswith("Heartbeat failed")


def test_install_filters_records_of_aiokafka_child_loggers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = install("127.0.0.1:1", interval=3600)
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(50):
                logging.getLogger("aiokafka.conn").error("Unable connect to %r", "127.0.0.1:1")
                logging.getLogger("aiokafka.consumer.fetcher").error("NodeNotReadyError: x")
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and lines[0].startswith("Kafka broker unreachable"), lines
    finally:
        for name in ["aiokafka", *logging.root.manager.loggerDict]:
            if name.split(".")[0] == "aiokafka":
                logging.getLogger(name).removeFilter(outage)
