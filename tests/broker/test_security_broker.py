"""Authentication and ACLs enforced by a real Kafka broker running with security on.

This module starts its OWN broker (SASL_SSL + SCRAM-SHA-512, StandardAuthorizer, deny by
default) on free ports with a state folder under a temp dir, via `deploy/kafka/kafka.sh up`, and
stops it at the end; the plaintext broker other tests use is untouched.  Every denial below comes
from the broker: the client raises the authorisation error it returned.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from schemas.org import load_registry
from stixbus.kafka.acl_admin import apply, show, show_quotas
from stixbus.kafka.acls import ADMIN, EGRESS, WORKER
from stixbus.kafka.admin import ensure_topics, list_topics
from stixbus.kafka.client import publish, read_topic
from stixbus.kafka.config import client_kwargs, confluent_config, read_credentials
from stixbus.kafka.quotas import PRODUCER_BYTE_RATE, Quota, settings_quotas
from stixbus.kafka.topics import TopicNames
from stixbus.settings import Limits, Settings
from tests.helpers.bus import free_port
from tests.helpers.paths import REPO_ROOT

KAFKA_SH = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"
REGISTRY = REPO_ROOT / "deploy" / "orgs.yaml"
NAMES = TopicNames("stixbus")


@dataclass
class SecureBus:
    home: Path
    settings: Settings
    env: dict[str, str]
    worker: subprocess.Popen[bytes] | None = None

    def conn(self, principal: str, **override: Any) -> dict[str, Any]:
        return {**client_kwargs(self.settings, principal), **override}

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stixbus.cli.main", *args],
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
        )


def _kafka(action: str, env: dict[str, str]) -> None:
    result = subprocess.run(
        ["bash", str(KAFKA_SH), action], env=env, capture_output=True, text=True, timeout=180
    )
    if result.returncode != 0:
        raise AssertionError(f"kafka.sh {action} failed:\n{result.stdout}\n{result.stderr}")


def _wait_ready(bus: SecureBus, port: str, timeout: float = 90) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert bus.worker is not None
        if bus.worker.poll() is not None:
            log = (bus.home / "worker.log").read_text(errors="replace")[-4000:]
            raise AssertionError(f"secured worker exited {bus.worker.returncode}:\n{log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if orjson.loads(resp.read()).get("ready"):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
    raise AssertionError("secured worker not ready")


@pytest.fixture(scope="module")
def secure_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBus]:
    home = tmp_path_factory.mktemp("secure-home")
    port, cport, web = str(free_port()), str(free_port()), str(free_port())
    env = {
        **os.environ,
        "STIXBUS_HOME": str(home),
        "KAFKA_PORT": port,
        "KAFKA_CONTROLLER_PORT": cport,
        "KAFKA_HEAP": "-Xms256m -Xmx512m",
        "STIXBUS_KAFKA_SECURITY": "sasl_ssl",
        "STIXBUS_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "STIXBUS_TOPIC_PREFIX": "stixbus",
        "STIXBUS_APP_ID": "stixbus",
        "STIXBUS_REGISTRY_PATH": str(REGISTRY),
        "STIXBUS_WEB_PORT": web,
        "STIXBUS_PARTITIONS": "2",
        "STIXBUS_STORE": "memory://",
    }
    for key in ("STIXBUS_SASL_USERNAME", "STIXBUS_SASL_PASSWORD", "STIXBUS_SECURITY_PROTOCOL"):
        env.pop(key, None)
    _kafka("up", env)
    bus: SecureBus | None = None
    try:
        settings = Settings(
            _env_file=home / "secrets" / "client.env",
            bootstrap_servers=f"127.0.0.1:{port}",
            home=home,
            topic_prefix="stixbus",
            app_id="stixbus",
            partitions=2,
            registry_path=REGISTRY,
        )
        assert settings.security_protocol == "SASL_SSL", "kafka.sh did not write client.env"
        bus = SecureBus(home, settings, env)
        apply(settings, load_registry(REGISTRY))
        specs = NAMES.all_specs(load_registry(REGISTRY), 2, app_id="stixbus")
        asyncio.run(ensure_topics(bus.conn(ADMIN), specs))
        applied = bus.cli("agreements", "apply", str(REPO_ROOT / "deploy" / "agreements.yaml"))
        assert applied.returncode == 0, applied.stderr  # as the operator principal
        log = (home / "worker.log").open("ab")
        bus.worker = subprocess.Popen(
            [sys.executable, "-m", "stixbus.cli.main", "worker", "--loglevel", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        _wait_ready(bus, web)
        yield bus
    finally:
        if bus is not None and bus.worker is not None and bus.worker.poll() is None:
            os.killpg(bus.worker.pid, signal.SIGTERM)
            try:
                bus.worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(bus.worker.pid, signal.SIGKILL)
        _kafka("down", env)


def _diagnose(bus: SecureBus) -> dict[str, int]:
    """Record counts per pipeline topic, read as admin (for failure messages)."""

    async def count(topic: str) -> int:
        conn = bus.conn(ADMIN)
        return len([r async for r in read_topic(conn, topic, from_beginning=True, max_wait=5)])

    topics = [NAMES.ingest("cert"), NAMES.receipts("cert"), NAMES.normalized, NAMES.audit]
    return {t: asyncio.run(count(t)) for t in [*topics, NAMES.deliver("bank-a")]}


# -- allowed paths --------------------------------------------------------------------------------


def test_cert_publish_reaches_bank_a_through_the_worker(secure_bus: SecureBus) -> None:
    sent = secure_bus.cli("publish", "--as", "cert", str(REPO_ROOT / "deploy/demo/cert.json"))
    assert sent.returncode == 0, sent.stderr

    async def bank_a_reads() -> list[Any]:
        conn = secure_bus.conn("bank-a")
        return [
            r.json()
            async for r in read_topic(
                conn, NAMES.deliver("bank-a"), group_id="stixbus.bank-a.e2e", max_wait=10
            )
        ]

    deadline = time.monotonic() + 60
    delivered: list[Any] = []
    while not delivered and time.monotonic() < deadline:
        delivered = asyncio.run(bank_a_reads())
    assert delivered, f"bank-a received nothing under SASL_SSL: {_diagnose(secure_bus)}"
    assert all(o["type"] for o in delivered)

    consumed = secure_bus.cli("consume", "--as", "bank-a", "--from-beginning")
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.strip()
    receipts = secure_bus.cli("receipts", "--as", "cert")
    assert receipts.returncode == 0 and "accepted" in receipts.stdout, receipts.stderr


def test_security_apply_is_idempotent_and_show_lists_acls(secure_bus: SecureBus) -> None:
    again = apply(secure_bus.settings, load_registry(REGISTRY))
    assert again.acls.empty and not again.users.upsert and not again.users.delete
    assert again.quotas.empty
    shown = secure_bus.cli("security", "show", env={**secure_bus.env, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert "User:bank-a" in shown.stdout and "stixbus.deliver.bank-a" in shown.stdout
    assert "producer_byte_rate" in shown.stdout and "33554432" in shown.stdout  # the CERT's


def test_security_apply_sets_the_planned_quotas(secure_bus: SecureBus) -> None:
    """What the broker enforces, read back from it, is the plan: every org its quotas (the
    CERT its registry override), no bus principal any."""
    registry = load_registry(REGISTRY)
    on_broker = show_quotas(secure_bus.settings)
    assert on_broker == settings_quotas(registry, secure_bus.settings)
    assert {q.user for q in on_broker} == {o.id for o in registry.orgs}
    assert Quota("cert", PRODUCER_BYTE_RATE, 32 * 1024 * 1024) in on_broker


# -- denials by the broker ------------------------------------------------------------------------


def test_bank_a_cannot_read_bank_b_delivery(secure_bus: SecureBus) -> None:
    async def run() -> None:
        async for _ in read_topic(
            secure_bus.conn("bank-a"), NAMES.deliver("bank-b"), from_beginning=True
        ):
            pass

    with pytest.raises(TopicAuthorizationFailedError, match=r"stixbus\.deliver\.bank-b"):
        asyncio.run(run())


@pytest.mark.parametrize("topic", [NAMES.feedback, NAMES.feedback_sources, NAMES.false_positives])
def test_no_org_reads_the_feedback_topics(secure_bus: SecureBus, topic: str) -> None:
    """Who received and sighted what (docs/feedback.md) stays with the worker."""

    async def run() -> None:
        async for _ in read_topic(secure_bus.conn("bank-a"), topic, from_beginning=True):
            pass

    with pytest.raises(TopicAuthorizationFailedError, match=topic.replace(".", r"\.")):
        asyncio.run(run())


def test_bank_a_cannot_write_cert_ingest(secure_bus: SecureBus) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(**secure_bus.conn("bank-a"))
        await producer.start()
        try:
            await asyncio.wait_for(producer.send_and_wait(NAMES.ingest("cert"), b"{}"), 30)
        finally:
            await producer.stop()

    with pytest.raises(TopicAuthorizationFailedError, match=r"stixbus\.ingest\.cert"):
        asyncio.run(run())
    # and through the bus's own publish helper, impersonating the CERT
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(publish(secure_bus.conn("bank-a"), NAMES.ingest("cert"), b"{}"))


def test_isp_cannot_join_the_workers_consumer_group(secure_bus: SecureBus) -> None:
    async def run() -> None:
        consumer = AIOKafkaConsumer(
            **secure_bus.conn("isp-one"), group_id="stixbus", enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.subscribe([NAMES.deliver("isp-one")])
            await asyncio.wait_for(consumer.getmany(timeout_ms=5000), 30)
        finally:
            await consumer.stop()

    with pytest.raises(GroupAuthorizationFailedError, match="stixbus"):
        asyncio.run(run())


def _bootstrap_fails(conn: dict[str, Any]) -> None:
    async def run() -> None:
        admin_ok = await asyncio.wait_for(list_topics(conn), 30)
        raise AssertionError(f"connected without valid credentials: {admin_ok}")

    with pytest.raises(KafkaConnectionError):
        asyncio.run(run())


def test_wrong_password_is_rejected_by_the_broker(
    secure_bus: SecureBus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="aiokafka")
    _bootstrap_fails(secure_bus.conn("bank-a", sasl_plain_password="not-the-password"))
    assert "SaslAuthenticationFailed" in caplog.text


def test_no_credentials_are_rejected(secure_bus: SecureBus) -> None:
    tls_only = secure_bus.conn("bank-a")
    # TLS but no SASL: the broker closes the connection before any request is served.
    _bootstrap_fails(
        {
            "bootstrap_servers": tls_only["bootstrap_servers"],
            "security_protocol": "SSL",
            "ssl_context": tls_only["ssl_context"],
        }
    )
    # The CLI without any credentials stops before connecting, saying what to set.
    env = {**secure_bus.env, "STIXBUS_HOME": str(secure_bus.home / "elsewhere")}
    env["STIXBUS_SECURITY_PROTOCOL"] = "SASL_SSL"
    result = secure_bus.cli("consume", "--as", "bank-a", env=env)
    assert result.returncode != 0
    assert "STIXBUS_SASL_USERNAME" in result.stderr and "Traceback" not in result.stderr


def test_removed_org_loses_its_credentials_and_acls(
    secure_bus: SecureBus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = yaml.safe_load(REGISTRY.read_text())
    data["orgs"].append(
        {
            "id": "bank-z",
            "name": "Zeta Bank (leaving)",
            "sector": "bank",
            "identity_id": "identity--0b9ef2f5-5d5e-4b4b-9a7e-2f5d3c1f0a11",
            "default_tlp": "amber",
            "roles": ["publisher", "subscriber"],
            "quotas": {"producer_byte_rate": 12 * 1024 * 1024},
        }
    )
    with_z = tmp_path / "orgs-with-z.yaml"
    with_z.write_text(yaml.safe_dump(data))
    added = apply(secure_bus.settings, load_registry(with_z))
    assert "bank-z" in added.users.upsert
    z_quotas = [
        q for q in settings_quotas(load_registry(with_z), secure_bus.settings) if q.user == "bank-z"
    ]
    assert Quota("bank-z", PRODUCER_BYTE_RATE, 12 * 1024 * 1024) in z_quotas
    assert set(added.quotas.set) == set(z_quotas)
    assert [q for q in show_quotas(secure_bus.settings) if q.user == "bank-z"] == z_quotas
    old_password = read_credentials(secure_bus.settings.credentials_file)["bank-z"]  # type: ignore[arg-type]
    bank_z = secure_bus.conn("bank-z")
    asyncio.run(asyncio.wait_for(list_topics(bank_z), 30))  # authenticates while registered

    removed = apply(secure_bus.settings, load_registry(REGISTRY))
    assert removed.users.delete == ("bank-z",)
    # bank-z's own bindings, and the worker's and the pull servers' literal rights on
    # bank-z's topics.
    assert {b.user for b in removed.acls.delete} == {"bank-z", WORKER, EGRESS}
    assert all(
        b.resource_name.endswith(".bank-z")
        for b in removed.acls.delete
        if b.user in (WORKER, EGRESS)
    )
    assert removed.quotas.remove == tuple(z_quotas) and not removed.quotas.set
    acls, users = show(secure_bus.settings)
    assert "bank-z" not in users and all(b.user != "bank-z" for b in acls)
    assert all(q.user != "bank-z" for q in show_quotas(secure_bus.settings))
    assert "bank-z" not in read_credentials(secure_bus.settings.credentials_file)  # type: ignore[arg-type]

    caplog.set_level(logging.ERROR, logger="aiokafka")
    _bootstrap_fails({**bank_z, "sasl_plain_password": old_password})
    assert "SaslAuthenticationFailed" in caplog.text


def test_worker_principal_cannot_read_a_delivery_topic(secure_bus: SecureBus) -> None:
    async def run() -> None:
        async for _ in read_topic(
            secure_bus.conn(WORKER), NAMES.deliver("bank-a"), from_beginning=True
        ):
            pass

    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(run())


def _flood(bus: SecureBus, user: str, topic: str, total: int = 1536 * 1024) -> float:
    """Produce `total` bytes as `user` as fast as the client goes; stop at the broker's first
    throttle.  Returns the largest throttle time (seconds) the broker reported, 0 if none."""
    from confluent_kafka import Producer

    throttles: list[float] = []
    conf = {
        **confluent_config(bus.settings, user),
        "linger.ms": 5,
        "throttle_cb": lambda event: throttles.append(event.throttle_time),
    }
    producer = Producer(conf)
    record, sent = b"x" * (32 * 1024), 0
    deadline = time.monotonic() + 20
    while sent < total and not any(throttles) and time.monotonic() < deadline:
        try:
            producer.produce(topic, record)
            sent += len(record)
        except BufferError:
            pass
        producer.poll(0.01)
    end = time.monotonic() + 8
    while not any(throttles) and time.monotonic() < end and producer.flush(0.2):
        pass  # the last requests' responses may carry the throttle
    producer.purge()  # what is still queued or in flight fails locally
    producer.flush(1)
    return max(throttles, default=0.0)


def test_a_publisher_over_its_byte_rate_is_throttled_while_other_receipts_flow(
    secure_bus: SecureBus, tmp_path: Path
) -> None:
    """bank-q floods its own ingest topic: under the default quota (8 MiB/s) the broker never
    throttles it; with its registry override of 64 KiB/s the broker throttles it, and a CERT
    submission sent meanwhile gets its receipt through the worker as usual."""
    data = yaml.safe_load(REGISTRY.read_text())
    data["orgs"].append(
        {
            "id": "bank-q",
            "name": "Quota Bank (floods)",
            "sector": "bank",
            "identity_id": "identity--7c1d7e1a-3b6f-4d2b-8f3e-5a4c2b1d0e9f",
            "default_tlp": "amber",
            "roles": ["publisher"],
        }
    )
    plain = tmp_path / "orgs-with-q.yaml"
    plain.write_text(yaml.safe_dump(data))
    data["orgs"][-1]["quotas"] = {"producer_byte_rate": 64 * 1024}
    limited = tmp_path / "orgs-with-q-limited.yaml"
    limited.write_text(yaml.safe_dump(data))
    topic = NAMES.ingest("bank-q")
    try:
        apply(secure_bus.settings, load_registry(plain))
        specs = NAMES.all_specs(load_registry(plain), 2, app_id="stixbus")
        asyncio.run(ensure_topics(secure_bus.conn(ADMIN), [s for s in specs if s.name == topic]))
        assert _flood(secure_bus, "bank-q", topic) == 0.0, "throttled under the default quota"

        # 64 KiB/s is below the 4 MiB submission floor: allowed here with a smaller record limit.
        small = secure_bus.settings.model_copy(update={"limits": Limits(message_bytes=64 * 1024)})
        applied = apply(small, load_registry(limited))
        assert Quota("bank-q", PRODUCER_BYTE_RATE, 64 * 1024) in applied.quotas.set
        throttle = _flood(secure_bus, "bank-q", topic)
        assert throttle > 0, "the broker did not throttle bank-q over its 64 KiB/s quota"

        started = time.monotonic()
        payload = (REPO_ROOT / "deploy/demo/cert.json").read_bytes()
        sent = asyncio.run(publish(secure_bus.conn("cert"), NAMES.ingest("cert"), payload))

        async def receipt() -> bool:
            async for r in read_topic(
                secure_bus.conn("cert"), NAMES.receipts("cert"), from_beginning=True, max_wait=5
            ):
                if r.key == sent.submission_id.encode():
                    return True
            return False

        while not asyncio.run(receipt()):
            assert time.monotonic() - started < 30, "no CERT receipt while bank-q was throttled"
        waited = time.monotonic() - started
        print(f"bank-q throttled {throttle:.2f} s; CERT receipt after {waited:.2f} s")
    finally:
        apply(secure_bus.settings, load_registry(REGISTRY))
    assert all(q.user != "bank-q" for q in show_quotas(secure_bus.settings))


def _readyz(port: str) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_readyz_reports_a_lost_broker_and_recovers(secure_bus: SecureBus) -> None:
    """Last in this module: it stops and restarts this module's own broker."""
    port = secure_bus.env["STIXBUS_WEB_PORT"]
    assert _readyz(port)[0] == 200
    _kafka("down", secure_bus.env)
    status, body = _readyz(port)
    assert status == 503 and body["broker_reachable"] is False, body
    _kafka("up", secure_bus.env)
    deadline = time.monotonic() + 60
    while _readyz(port)[0] != 200:
        assert time.monotonic() < deadline, "worker never became ready again after the broker"
        time.sleep(0.5)


def test_strimzi_kafka_users_carry_exactly_the_broker_acls(secure_bus: SecureBus) -> None:
    """`stixbus security k8s` gives a Strimzi cluster the ACLs and quotas `security apply` gave
    this broker: the bindings and user quotas the broker enforces now (read back from it) equal
    those of the generated KafkaUser resources for the same registry, prefix and app id."""
    from stixbus.kafka.strimzi import K8sTarget, acl_from_strimzi, kafka_users, quotas_from_strimzi

    enforced, _ = show(secure_bus.settings)
    registry = load_registry(REGISTRY)
    quotas = settings_quotas(registry, secure_bus.settings)
    docs = kafka_users(registry, "stixbus", "stixbus", quotas, K8sTarget())
    generated = sorted(
        binding
        for doc in docs
        for acl in doc["spec"]["authorization"]["acls"]
        for binding in acl_from_strimzi(doc["metadata"]["name"], acl)
    )
    assert generated == sorted(b for b in enforced if b.user != ADMIN)
    # and the KafkaUsers' spec.quotas are the user quotas this broker enforces
    generated_quotas = sorted(
        q for doc in docs for q in quotas_from_strimzi(doc["metadata"]["name"], doc["spec"])
    )
    assert generated_quotas == [q for q in show_quotas(secure_bus.settings) if q.user != ADMIN]
