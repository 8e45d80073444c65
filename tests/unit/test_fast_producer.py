"""The fast producer's pure parts: its librdkafka config and the batch acknowledgement count."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from stixbus.kafka import fast_producer
from stixbus.kafka.fast_producer import Batch, DeliveryFailed, FastProducer, producer_config
from stixbus.settings import Settings


class _Msg:
    def topic(self) -> str:
        return "p.deliver.bank-a"

    def partition(self) -> int:
        return 0


def test_config_keeps_the_ordering_guarantees_and_the_producer_settings() -> None:
    settings = Settings(
        bootstrap_servers="127.0.0.1:1", producer_linger_ms=7, producer_batch_bytes=1 << 18
    )
    config = producer_config(settings)
    assert config["acks"] == "all" and config["enable.idempotence"] is True
    # aiokafka's DefaultPartitioner (Faust's) is the Java murmur2: keyed records co-partition.
    assert config["partitioner"] == "murmur2_random"
    assert config["linger.ms"] == 7 and config["batch.size"] == 1 << 18
    assert config["message.max.bytes"] == settings.max_record_bytes
    assert config["bootstrap.servers"] == "127.0.0.1:1"
    assert "security.protocol" not in config  # plaintext


def test_config_uses_the_shared_sasl_ssl_credentials(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    settings = Settings(
        bootstrap_servers="127.0.0.1:1", security_protocol="SASL_SSL",
        sasl_username="stixbus-worker", sasl_password="pw", ssl_cafile=ca,
    )  # fmt: skip
    config = producer_config(settings)
    assert config["security.protocol"] == "SASL_SSL"
    assert (config["sasl.username"], config["sasl.password"]) == ("stixbus-worker", "pw")
    assert config["ssl.ca.location"] == str(ca)


async def _reports(batch: Batch, errors: list[KafkaError | None]) -> None:
    """Deliver one report per entry from another thread, as librdkafka's poll thread does."""
    for _ in errors:
        batch._count()

    def poll() -> None:
        for e in errors:
            batch._on_delivery(e, _Msg())  # type: ignore[arg-type]  # the two methods used

    thread = threading.Thread(target=poll)
    thread.start()
    await asyncio.wait_for(batch.acked(), 5)
    thread.join()


def test_batch_returns_once_every_record_is_acknowledged() -> None:
    async def go() -> None:
        batch = Batch(asyncio.get_running_loop())
        await _reports(batch, [None] * 1000)
        assert batch.sent == 1000

    asyncio.run(go())


def test_batch_waits_for_late_reports() -> None:
    async def go() -> None:
        batch = Batch(asyncio.get_running_loop())
        batch._count()
        waiter = asyncio.ensure_future(batch.acked())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # sealed but one report outstanding
        threading.Thread(target=batch._on_delivery, args=(None, _Msg())).start()  # the poll thread
        await asyncio.wait_for(waiter, 5)

    asyncio.run(go())


def test_a_batch_waiting_on_the_broker_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent held by unacknowledged records logs why, and is still released by the late
    report (the chaos run's stalled agents logged nothing)."""
    monkeypatch.setattr(fast_producer, "ACK_WAIT_LOG_SECONDS", 0.05)

    async def go() -> None:
        batch = Batch(asyncio.get_running_loop(), queued=lambda: 7)
        batch._count()
        batch._count()
        batch._on_delivery(None, _Msg())  # type: ignore[arg-type]
        waiter = asyncio.ensure_future(batch.acked())
        await asyncio.sleep(0.2)
        assert not waiter.done()
        batch._on_delivery(None, _Msg())  # type: ignore[arg-type]
        await asyncio.wait_for(waiter, 5)

    with caplog.at_level("WARNING", logger=fast_producer.__name__):
        asyncio.run(go())
    waits = [r.getMessage() for r in caplog.records]
    assert waits and "1 of 2 records of a batch are not acknowledged" in waits[0]
    assert "the producer holds 7 records" in waits[0]


def test_the_delivery_timeout_is_bounded_and_a_setting() -> None:
    assert producer_config(Settings(bootstrap_servers="127.0.0.1:1"))["message.timeout.ms"] == (
        120_000
    )
    settings = Settings(bootstrap_servers="127.0.0.1:1", producer_delivery_timeout_ms=5000)
    assert producer_config(settings)["message.timeout.ms"] == 5000


def test_an_empty_batch_is_acknowledged_at_once() -> None:
    async def go() -> None:
        await asyncio.wait_for(Batch(asyncio.get_running_loop()).acked(), 1)

    asyncio.run(go())


def test_a_refused_record_fails_the_batch_loudly() -> None:
    async def go() -> None:
        batch = Batch(asyncio.get_running_loop())
        err = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
        with pytest.raises(DeliveryFailed, match=r"p\.deliver\.bank-a.*not acknowledged"):
            await _reports(batch, [None, err, None])

    asyncio.run(go())


def test_a_record_the_producer_refuses_fails_loudly_too() -> None:
    """Refused before any broker is involved (over message.max.bytes): DeliveryFailed, not a
    bare KafkaException (the agents crash the worker on DeliveryFailed)."""
    settings = Settings(bootstrap_servers="127.0.0.1:1", max_record_bytes=1000)
    producer = FastProducer.from_settings(settings)

    async def go() -> None:
        batch = producer.batch()
        with pytest.raises(DeliveryFailed, match=r"'p\.audit' \(5,000 bytes\) was refused"):
            await producer.send(batch, "p.audit", b"k", b"x" * 5000)

    try:
        asyncio.run(go())
    finally:
        producer.close(0)
