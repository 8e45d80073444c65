"""The skipped-records sensor (stixbus/worker_state.py): Faust acks a record it never handed
to the agent; the sensor says so, once a second, per partition."""

from __future__ import annotations

import logging

import pytest
from faust.types import TP

from stixbus import worker_state
from stixbus.worker_state import SkippedEvents


def test_a_record_acked_without_reaching_the_agent_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sensor, stream, tp = SkippedEvents(), object(), TP("p.ingest.cert", 0)
    with caplog.at_level(logging.WARNING, logger=worker_state.__name__):
        for offset in (12, 13):  # handed to the agent, then acked: nothing to say
            sensor.on_stream_event_in(tp, offset, stream, None)
            sensor.on_stream_event_out(tp, offset, stream, None)
        assert caplog.records == []
        for offset in (14, 15, 16):  # acked, never handed over
            sensor.on_stream_event_out(tp, offset, stream, None)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1  # folded: one line per second
    assert "p.ingest.cert/0 offsets 14-14 (1)" in lines[0]


def test_a_batch_acked_later_is_not_taken_for_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """take_events hands records over first and acks the batch after the body."""
    sensor, stream, tp = SkippedEvents(), object(), TP("p.claims", 1)
    with caplog.at_level(logging.WARNING, logger=worker_state.__name__):
        for offset in range(5):
            sensor.on_stream_event_in(tp, offset, stream, None)
        for offset in range(5):
            sensor.on_stream_event_out(tp, offset, stream, None)
    assert caplog.records == []
