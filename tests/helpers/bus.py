"""Fixtures for tests against the real local Kafka broker.

The broker is started by `make test` (deploy/test.sh).  If it is not reachable the tests FAIL:
nothing is skipped for lack of a broker.  Each worker fixture uses a unique topic prefix and
app id, so tests never see each other's records.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from schemas.org import Registry, load_registry
from stixbus.cli.agreements import apply_file
from stixbus.kafka.admin import ensure_topics
from stixbus.kafka.client import Record, publish, read_topic
from stixbus.kafka.topics import TopicNames
from stixbus.settings import Retention, Settings
from tests.helpers.paths import AGREEMENTS_YAML, ORGS_YAML, REPO_ROOT

AGREEMENTS = AGREEMENTS_YAML
BOOTSTRAP = os.environ.get("STIXBUS_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
WORKER_LOGLEVEL = os.environ.get("STIXBUS_TEST_WORKER_LOGLEVEL", "warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Bus:
    """A running stixbus worker on its own topic prefix."""

    bootstrap: str
    prefix: str
    home: Path
    env: dict[str, str]
    registry: Registry
    names: TopicNames
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def conn(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap}

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.env['STIXBUS_WEB_PORT']}"

    def cli(
        self, *args: str, stdin: bytes | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "stixbus.cli.main", *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            timeout=timeout,
            cwd=REPO_ROOT,
        )

    def publish(
        self,
        org: str,
        payload: bytes | dict[str, Any] | list[Any],
        submission_id: str | None = None,
    ) -> str:
        raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        sent = asyncio.run(publish(self.conn, self.names.ingest(org), raw, submission_id))
        return sent.submission_id

    def read(self, topic: str, expect: int | None = None, timeout: float = 30.0) -> list[Record]:
        """Everything on `topic`; waits until at least `expect` records arrived (or timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            records = asyncio.run(self._read_all(topic))
            if expect is None or len(records) >= expect or time.monotonic() > deadline:
                return records
            time.sleep(0.5)

    async def _read_all(self, topic: str) -> list[Record]:
        return [r async for r in read_topic(self.conn, topic, from_beginning=True, max_wait=10)]

    def objects(
        self, topic: str, expect: int | None = None, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        return [r.json() for r in self.read(topic, expect, timeout)]  # type: ignore[misc]

    def decisions(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Every per-subscriber decision on the audit topic (one audit entry per route step
        folds its decisions: schemas/audit.py AuditEntry)."""
        return [d for e in self.objects(self.names.audit, timeout=timeout) for d in e["decisions"]]

    @property
    def settings(self) -> Settings:
        return Settings(bootstrap_servers=self.bootstrap, topic_prefix=self.prefix)

    def apply_agreements(self, path: Path, prune: bool = True) -> tuple[list[str], list[str]]:
        """Publish an agreements YAML to this bus's agreements topic (hot reload)."""
        return apply_file(self.settings, path, prune)

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the worker process without waiting for it (several workers start together)."""
        log = (self.home / "worker.log").open("ab")
        self.proc = subprocess.Popen(
            # STIXBUS_TEST_WORKER_LOGLEVEL=info: Faust's rebalance and recovery lines, to debug
            [sys.executable, "-m", "stixbus.cli.main", "worker", "--loglevel", WORKER_LOGLEVEL],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.web + "/readyz", timeout=2) as resp:
                    if orjson.loads(resp.read()).get("ready"):
                        return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def log_tail(self, lines: int = 60) -> str:
        path = self.home / "worker.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )


def make_bus(bootstrap: str, tmp: Path, **env: str) -> Bus:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    full_env = {
        **os.environ,
        "STIXBUS_BOOTSTRAP_SERVERS": bootstrap,
        "STIXBUS_TOPIC_PREFIX": prefix,
        "STIXBUS_APP_ID": f"{prefix}-worker",
        "STIXBUS_HOME": str(tmp),
        "STIXBUS_WEB_PORT": str(free_port()),
        "STIXBUS_PARTITIONS": "2",
        "STIXBUS_STORE": "memory://",
        **env,
    }
    registry = load_registry(full_env.get("STIXBUS_REGISTRY_PATH", ORGS_YAML))
    names = TopicNames(prefix)
    partitions = int(full_env["STIXBUS_PARTITIONS"])
    asyncio.run(
        ensure_topics(
            {"bootstrap_servers": bootstrap},
            names.all_specs(
                registry,
                partitions,
                Settings().max_record_bytes,
                ingest_message_bytes=int(
                    full_env.get("STIXBUS_TEST_INGEST_TOPIC_BYTES", Settings().limits.message_bytes)
                ),
                app_id=full_env["STIXBUS_APP_ID"],
                retention=Retention.model_validate(
                    {
                        k.removeprefix("STIXBUS_RETENTION_").lower(): v
                        for k, v in env.items()
                        if k.startswith("STIXBUS_RETENTION_")
                    }
                ),
            ),
            int(full_env.get("STIXBUS_REPLICATION_FACTOR", "1")),
            int(full_env["STIXBUS_MIN_INSYNC_REPLICAS"])
            if full_env.get("STIXBUS_MIN_INSYNC_REPLICAS")
            else None,
        )
    )
    bus = Bus(bootstrap, prefix, tmp, full_env, registry, names)
    bus.apply_agreements(Path(full_env.get("STIXBUS_AGREEMENTS_PATH", AGREEMENTS)))
    return bus
