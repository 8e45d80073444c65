"""What the broker's ACLs do not protect, attacked on a real secured stack (issue #12).

Findings 2 (the worker's web port), 4 (files at rest), 8 (the worker principal's rights) and
10 (secrets on command lines and in the broker's environment).  This module starts its OWN
SASL_SSL broker with ACLs, as `stixbus up` does, under a state folder in a world-traversable
temp folder (as `<repo>/.stixbus` is), while a sampler records every process's command line;
then `stixbus up --no-demo` (security apply, topics, agreements, a worker with RocksDB state).
Each test plays the attacker: a local account (`nobody`), a `ps` watcher, an HTTP client with
no credentials, a stolen worker password.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

from stixbus.kafka.acls import ADMIN, EGRESS, WORKER
from stixbus.kafka.admin import list_topics
from stixbus.kafka.client import read_topic
from stixbus.kafka.config import client_kwargs, read_credentials
from stixbus.kafka.topics import TopicNames
from stixbus.settings import Settings
from tests.helpers.bus import free_port
from tests.helpers.paths import REPO_ROOT

KAFKA_SH = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"
REGISTRY = REPO_ROOT / "deploy" / "orgs.yaml"
NAMES = TopicNames("stixbus")
# In the CLI's environment when it starts the broker: it must not reach the broker's.
CLI_PASSWORD_MARK = "cli-sasl-password-7f3a9c1e5b"


@dataclass
class HostBus:
    home: Path
    env: dict[str, str]
    web_port: str
    settings: Settings
    argv_seen: set[str] = field(default_factory=set)
    broker_environ: bytes = b""
    broker_cmdline: bytes = b""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stixbus.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=REPO_ROOT,
        )

    def conn(self, principal: str) -> dict[str, Any]:
        return client_kwargs(self.settings, principal)

    def secrets(self) -> set[str]:
        """Every password the stack holds: broker.secrets and credentials.json."""
        found = set(read_credentials(self.home / "secrets" / "credentials.json").values())
        for line in (self.home / "secrets" / "broker.secrets").read_text().splitlines():
            if "=" in line:
                found.add(line.split("=", 1)[1].strip())
        return {s for s in found if len(s) >= 16}


class ArgvSampler(threading.Thread):
    """`ps -eww -o args` (full width) as fast as it runs, keeping every distinct command line."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: set[str] = set()
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            out = subprocess.run(
                ["ps", "-eww", "-o", "args"], capture_output=True, text=True
            ).stdout
            self.seen.update(out.splitlines())
            self.samples += 1


def _run(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def host_bus() -> Iterator[HostBus]:
    # World-traversable like a checkout (pytest's own tmp folders are 0700, which would hide
    # what the stack itself leaves open).
    root = Path(tempfile.mkdtemp(prefix="stixbus-host-", dir="/tmp"))
    root.chmod(0o755)
    home = root / "home"
    port, cport, web = str(free_port()), str(free_port()), str(free_port())
    taxii_port = str(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("STIXBUS_")}
    env |= {
        "STIXBUS_HOME": str(home),
        "KAFKA_PORT": port,
        "KAFKA_CONTROLLER_PORT": cport,
        "KAFKA_HEAP": "-Xms256m -Xmx512m",
        "STIXBUS_KAFKA_SECURITY": "sasl_ssl",
        "STIXBUS_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "STIXBUS_REGISTRY_PATH": str(REGISTRY),
        "STIXBUS_AGREEMENTS_PATH": str(REPO_ROOT / "deploy" / "agreements.yaml"),
        "STIXBUS_DEPLOY_DIR": str(REPO_ROOT / "deploy"),
        "STIXBUS_WEB_PORT": web,
        "STIXBUS_TAXII_PORT": taxii_port,
        "STIXBUS_PARTITIONS": "2",
        "STIXBUS_STORE": "rocksdb://",
    }
    sampler = ArgvSampler()
    sampler.start()
    bus: HostBus | None = None
    try:
        # The broker, started with a SASL password in the caller's environment...
        _run(["bash", str(KAFKA_SH), "up"], {**env, "STIXBUS_SASL_PASSWORD": CLI_PASSWORD_MARK})
        # ...then the rest of `stixbus up` (the broker is already running: kept).
        _run([sys.executable, "-m", "stixbus.cli.main", "up", "--no-demo"], env)
        settings = Settings(
            _env_file=home / "secrets" / "client.env",
            bootstrap_servers=f"127.0.0.1:{port}",
            home=home,
            partitions=2,
            registry_path=REGISTRY,
        )
        bus = HostBus(home, env, web, settings)
        pid = (home / "kafka" / "kafka.pid").read_text().strip()
        bus.broker_environ = Path(f"/proc/{pid}/environ").read_bytes()
        bus.broker_cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        sampler.stop.set()
        sampler.join(10)
        bus.argv_seen = set(sampler.seen)
        assert sampler.samples > 20, f"ps sampled only {sampler.samples} times"
        yield bus
    finally:
        sampler.stop.set()
        subprocess.run(
            [sys.executable, "-m", "stixbus.cli.main", "down"],
            env=env,
            capture_output=True,
            timeout=120,
            cwd=REPO_ROOT,
        )
        shutil.rmtree(root, ignore_errors=True)


# -- finding 10: secrets never on a command line, nor in the broker's environment -------------


def test_no_password_on_any_command_line_during_up(host_bus: HostBus) -> None:
    secrets = host_bus.secrets()
    assert len(secrets) >= 4, "expected the admin, keystore, worker and org passwords"
    # The sampler did see the broker's own start (so it watched the right moments).
    assert any("kafka.Kafka" in line for line in host_bus.argv_seen)
    assert any("StorageTool" in line or "format.args" in line for line in host_bus.argv_seen), (
        "the sampler never saw the storage format step"
    )
    leaked = sorted(line for line in host_bus.argv_seen for s in secrets if s in line)
    assert not leaked, f"passwords visible in ps during up: {leaked[:3]}"
    assert not any(s.encode() in host_bus.broker_cmdline for s in secrets)


def test_broker_environment_holds_no_credential(host_bus: HostBus) -> None:
    environ = host_bus.broker_environ.split(b"\0")
    assert environ and any(e.startswith(b"PATH=") for e in environ)  # read the real one
    assert not any(CLI_PASSWORD_MARK.encode() in e for e in environ)
    assert not any(e.startswith(b"STIXBUS_") for e in environ), environ
    assert not any(s.encode() in host_bus.broker_environ for s in host_bus.secrets())


# -- finding 2: the worker's web port -------------------------------------------------------


def _get(port: str, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


FAUST_VIEWS = [
    "/",
    "/table/",
    "/table/stixbus-dedup/",
    "/table/stixbus-dedup/00/",
    "/router/",
    "/router/stixbus-dedup/00/",
    "/assignment/",
    "/graph/",
    "/stats/",
    "/performance/",
    "/healthz/../table/",
    "/metrics/",
]


@pytest.mark.parametrize("path", FAUST_VIEWS)
def test_faust_views_are_gone(host_bus: HostBus, path: str) -> None:
    status, body = _get(host_bus.web_port, path)
    assert status == 404, f"{path} answered {status}: {body[:300]!r}"


def test_health_readiness_and_metrics_still_served(host_bus: HostBus) -> None:
    assert _get(host_bus.web_port, "/healthz")[0] == 200
    assert _get(host_bus.web_port, "/readyz")[0] == 200
    status, body = _get(host_bus.web_port, "/metrics")
    assert status == 200 and b"stixbus_submissions_total" in body


def test_worker_web_binds_loopback_only(host_bus: HostBus) -> None:
    listening = subprocess.run(
        ["ss", "-Hltn", f"sport = :{host_bus.web_port}"], capture_output=True, text=True
    ).stdout.split()
    local = [w for w in listening if w.endswith(f":{host_bus.web_port}")]
    assert local == [f"127.0.0.1:{host_bus.web_port}"], listening


# -- finding 8: the worker principal's rights -----------------------------------------------


def _produce(conn: dict[str, Any], topic: str) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(**conn)
        await producer.start()
        try:
            await asyncio.wait_for(producer.send_and_wait(topic, b"{}", key=b"k"), 30)
        finally:
            await producer.stop()

    asyncio.run(run())


def test_worker_cannot_publish_as_an_org(host_bus: HostBus) -> None:
    with pytest.raises(TopicAuthorizationFailedError, match=r"stixbus\.ingest\.cert"):
        _produce(host_bus.conn(WORKER), NAMES.ingest("cert"))


def test_worker_cannot_write_agreements(host_bus: HostBus) -> None:
    with pytest.raises(TopicAuthorizationFailedError, match=r"stixbus\.agreements"):
        _produce(host_bus.conn(WORKER), NAMES.agreements)


@pytest.mark.parametrize("topic", ["stixbus.evil", "stixbus-evil-changelog"])
def test_worker_cannot_create_a_topic(host_bus: HostBus, topic: str) -> None:
    async def create() -> list[int]:
        admin = AIOKafkaAdminClient(**host_bus.conn(WORKER), request_timeout_ms=15000)
        await admin.start()
        try:
            response = await admin.create_topics([NewTopic(topic, 1, 1)])
        except KafkaError as exc:
            return [int(getattr(exc, "errno", -1))]
        finally:
            await admin.close()
        return [int(err[1]) for err in response.topic_errors]

    codes = asyncio.run(create())
    # 29 TOPIC_AUTHORIZATION_FAILED, 31 CLUSTER_AUTHORIZATION_FAILED
    assert codes and all(c in (29, 31) for c in codes), codes
    assert topic not in asyncio.run(list_topics(host_bus.conn(ADMIN)))


def test_least_privileged_worker_runs_the_pipeline(host_bus: HostBus) -> None:
    sent = host_bus.cli("publish", "--as", "cert", str(REPO_ROOT / "deploy/demo/cert.json"))
    assert sent.returncode == 0, sent.stderr

    async def bank_a_reads() -> list[Any]:
        return [
            r.json()
            async for r in read_topic(
                host_bus.conn("bank-a"), NAMES.deliver("bank-a"), from_beginning=True, max_wait=10
            )
        ]

    deadline = time.monotonic() + 90
    delivered: list[Any] = []
    while not delivered and time.monotonic() < deadline:
        delivered = asyncio.run(bank_a_reads())
    log = (host_bus.home / "logs" / "worker.log").read_text(errors="replace")[-3000:]
    assert delivered, f"bank-a received nothing from the least-privileged worker:\n{log}"
    assert any(o.get("type") == "indicator" for o in delivered)


# -- finding 4: files at rest (after the pipeline test: segments and RocksDB state exist) --------


def _segments(home: Path) -> list[Path]:
    data = home / "kafka" / "data"
    return [p for p in data.glob("stixbus.ingest.cert-*/*.log") if p.stat().st_size > 0]


def test_nobody_cannot_read_segments_state_or_logs(host_bus: HostBus) -> None:
    deadline = time.monotonic() + 30
    while not _segments(host_bus.home) and time.monotonic() < deadline:
        time.sleep(0.5)
    segments = _segments(host_bus.home)
    assert segments, "no ingest segment with data (the pipeline test publishes one)"
    assert b"indicator" in segments[0].read_bytes()  # what `nobody` is after
    state = [p for p in (host_bus.home / "worker").rglob("*") if p.is_file()]
    assert any(".db" in str(p) for p in state), "no RocksDB state under the worker folder"
    targets = [
        segments[0],
        state[0],
        host_bus.home / "logs" / "worker.log",
        host_bus.home / "kafka" / "logs" / "server.log",
    ]
    for target in targets:
        read = subprocess.run(
            ["runuser", "-u", "nobody", "--", "cat", str(target)], capture_output=True
        )
        assert read.returncode != 0 and not read.stdout, f"nobody read {target}"
        assert b"Permission denied" in read.stderr
    listed = subprocess.run(
        ["runuser", "-u", "nobody", "--", "ls", str(host_bus.home / "kafka" / "data")],
        capture_output=True,
    )
    assert listed.returncode != 0, "nobody listed the topics in the Kafka data folder"


def test_every_folder_is_0700_and_every_file_0600(host_bus: HostBus) -> None:
    wrong = []
    for folder, dirs, files in os.walk(host_bus.home):
        for name, want in [*((d, 0o700) for d in dirs), *((f, 0o600) for f in files)]:
            path = Path(folder, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
                continue
            if stat.S_IMODE(st.st_mode) != want:
                wrong.append(f"{oct(stat.S_IMODE(st.st_mode))} {path}")
    assert stat.S_IMODE(host_bus.home.stat().st_mode) == 0o700
    assert not wrong, "\n".join(wrong[:20])


def test_up_tightens_state_left_open_by_an_older_version(host_bus: HostBus) -> None:
    old = host_bus.home / "logs" / "old-connector.log"
    old.write_text("TLP:RED line\n")
    old.chmod(0o644)
    (host_bus.home / "logs").chmod(0o755)
    _run(["bash", str(KAFKA_SH), "up"], host_bus.env)  # running: only tightens
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert stat.S_IMODE((host_bus.home / "logs").stat().st_mode) == 0o700


def test_credentials_file_is_private(host_bus: HostBus) -> None:
    creds = host_bus.home / "secrets" / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert json.loads(creds.read_text())["users"]


def test_worker_refuses_to_start_when_its_topics_are_missing(host_bus: HostBus) -> None:
    """It cannot create them (no CREATE right), so it says who must."""
    env = {**host_bus.env, "STIXBUS_APP_ID": "other-app", "STIXBUS_WEB_PORT": str(free_port())}
    started = subprocess.run(
        [sys.executable, "-m", "stixbus.cli.main", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert started.returncode != 0
    assert "other-app-stixbus-dedup-changelog" in started.stderr
    assert "stixbus topics" in started.stderr and "Traceback" not in started.stderr


# -- the TAXII server `up` starts (issue #14) --------------------------------------------------


def test_taxii_server_from_up_serves_tls_with_the_local_ca_as_egress(host_bus: HostBus) -> None:
    import requests

    added = host_bus.cli("taxii", "credentials", "add", "bank-a", "--label", "sentinel")
    assert added.returncode == 0, added.stderr
    password = added.stdout.strip().splitlines()[-1]
    base = f"https://127.0.0.1:{host_bus.env['STIXBUS_TAXII_PORT']}/taxii2/"
    ca = str(host_bus.home / "secrets" / "ca.pem")
    deadline = time.monotonic() + 60
    while True:
        try:
            resp = requests.get(
                base + "feeds/collections/", auth=("bank-a", password), verify=ca, timeout=10
            )
            if resp.status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "the TAXII server from `stixbus up` never answered"
        time.sleep(0.5)
    (collection,) = resp.json()["collections"]
    assert collection["can_read"] and not collection["can_write"]
    objects = requests.get(
        base + f"feeds/collections/{collection['id']}/objects/",
        auth=("bank-a", password),
        verify=ca,
        timeout=30,
    )
    assert objects.status_code == 200  # read deliver.bank-a as the egress principal
    with pytest.raises(requests.RequestException):  # no plain HTTP on the TLS port
        requests.get(base.replace("https", "http"), auth=("bank-a", password), timeout=10)
    assert requests.get(base, auth=("bank-a", "wrong"), verify=ca, timeout=10).status_code == 401


def test_egress_principal_writes_nothing_and_reads_only_deliveries(host_bus: HostBus) -> None:
    """A stolen egress password: no write to a delivery topic, no read of an ingest topic."""

    async def attack() -> None:
        producer = AIOKafkaProducer(**host_bus.conn(EGRESS))
        await producer.start()
        try:
            with pytest.raises(KafkaError):
                await producer.send_and_wait(NAMES.deliver("bank-a"), b"{}", key=b"x")
        finally:
            await producer.stop()
        with pytest.raises(KafkaError):
            async for _ in read_topic(
                host_bus.conn(EGRESS), NAMES.ingest("cert"), from_beginning=True, max_wait=5
            ):
                pass

    asyncio.run(attack())
