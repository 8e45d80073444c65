"""Issue #12 finding 11: an oversize submission never vanishes and never crashes the worker.

- The ingest topics take at most the ingest limit (`Limits.message_bytes`), so the broker
  refuses more, and `stixbus publish` says so in one line naming the size and the limit.
- A record that still gets through (an ingest topic created with a bigger `max.message.bytes`,
  as before this fix) gets a receipt and a bounded dead letter (head, size, sha256), and the
  worker goes on with the next submission.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from stixbus.core.deadletter import HEAD_BYTES
from stixbus.settings import Settings
from tests.helpers.bus import Bus, make_bus
from tests.helpers.connectors import receipts_for, sample_indicator

BIG = 12_700_000  # the size of the record in the finding
LIMIT = Settings().limits.message_bytes


def _big_bundle(size: int) -> bytes:
    """A valid-looking bundle of about `size` bytes (one long description)."""
    indicator = dict(sample_indicator(0, "oversize"), description="x" * size)
    return orjson.dumps(
        {
            "type": "bundle",
            "id": "bundle--" + "0" * 8 + "-0000-4000-8000-" + "0" * 12,
            "objects": [indicator],
        }
    )


@pytest.fixture
def legacy_bus(bootstrap: str, tmp_path: Path) -> Iterator[Bus]:
    """A bus whose ingest topics allow 16 MiB records, like every topic before the fix."""
    handle = make_bus(bootstrap, tmp_path, STIXBUS_TEST_INGEST_TOPIC_BYTES=str(16 * 1024 * 1024))
    handle.start()
    yield handle
    handle.stop()


def test_ingest_topic_refuses_more_than_the_ingest_limit(bus: Bus) -> None:
    async def produce() -> None:
        producer = AIOKafkaProducer(**bus.conn, max_request_size=32 * 1024 * 1024)
        await producer.start()
        try:
            await producer.send_and_wait(bus.names.ingest("cert"), b"x" * (LIMIT + 4096))
        finally:
            await producer.stop()

    with pytest.raises(MessageSizeTooLargeError):
        asyncio.run(produce())


def test_cli_publish_of_12_7_mb_fails_with_size_and_limit(bus: Bus, tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(_big_bundle(BIG))
    result = bus.cli("publish", "--as", "cert", str(path))
    assert result.returncode != 0
    err = " ".join(result.stderr.decode().split())  # one message (rich wraps it at 80 columns)
    assert err.startswith("stixbus: ") and err.count("stixbus: ") == 1, err
    assert f"{path.stat().st_size:,}" in err and f"{LIMIT:,}" in err, err
    assert "split" in err and "Traceback" not in err, err


def test_oversize_record_gets_receipt_and_bounded_dead_letter(legacy_bus: Bus) -> None:
    # Not UTF-8: kept verbatim its dead letter is base64, 4/3 of 12.7 MB, over the 16 MiB of
    # any stixbus record (what crashed the worker before the fix).
    raw = b'{"type": "bundle", "objects": ["' + b"\xff" * BIG + b'"]}'
    big_id = legacy_bus.publish("cert", raw)
    small = sample_indicator(1, "oversize-next")
    next_id = legacy_bus.publish(
        "cert",
        {
            "type": "bundle",
            "id": "bundle--" + "1" * 8 + "-0000-4000-8000-" + "1" * 12,
            "objects": [small],
        },
    )

    big_receipt, next_receipt = receipts_for(legacy_bus, "cert", [big_id, next_id], timeout=90)
    assert big_receipt["accepted"] == 0 and big_receipt["rejections"], big_receipt
    assert big_receipt["rejections"][0]["reason"] == "too_large", big_receipt
    assert next_receipt["accepted"] == 1, next_receipt  # the worker kept going

    deadline = time.monotonic() + 30
    letters: list[bytes] = []
    while time.monotonic() < deadline and not letters:
        letters = [
            r.value
            for r in legacy_bus.read(legacy_bus.names.deadletter, timeout=1)
            if r.key == big_id.encode()
        ]
    [value] = letters
    assert len(value) < 2 * HEAD_BYTES, len(value)
    letter = orjson.loads(value)
    assert letter["payload_truncated"] is True
    assert letter["payload_bytes"] == len(raw)
    assert letter["payload_sha256"] == hashlib.sha256(raw).hexdigest()
    assert base64.b64decode(letter["payload"]) == raw[:HEAD_BYTES]
    assert legacy_bus.proc is not None and legacy_bus.proc.poll() is None  # never crashed


def test_cli_names_the_broker_refusal_of_a_smaller_ingest_topic(
    bootstrap: str, tmp_path: Path
) -> None:
    """An ingest topic made with less than the ingest limit: the broker's refusal, in words."""
    small = make_bus(bootstrap, tmp_path, STIXBUS_TEST_INGEST_TOPIC_BYTES="100000")
    path = tmp_path / "medium.json"
    path.write_bytes(_big_bundle(300_000))
    result = small.cli("publish", "--as", "cert", str(path))
    assert result.returncode != 0
    err = " ".join(result.stderr.decode().split())
    assert "refused" in err and f"{LIMIT:,}" in err and "max.message.bytes" in err, err
    assert "Traceback" not in err, err
