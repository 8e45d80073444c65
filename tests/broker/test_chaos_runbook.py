"""docs/runbook.md, the two long cases (`make chaos`, not `make test`): a lost broker and a
full disk under the worker's state.

- Lost broker: the test's own broker (deploy/kafka/kafka.sh on free ports) stops under a
  running worker.  The worker stays up, says "broker unreachable" in one rate-limited line,
  /readyz answers 503 with broker_reachable false, the CLI prints one line; when the broker is
  back the worker delivers again without a restart.
- Full disk: the worker's home is a 64 MiB tmpfs (mounted as root, or with `sudo -n`; a real
  ENOSPC from the kernel, not a simulation), filled up with a file.  What is published meanwhile
  is delivered once space is freed and the worker restarted (if the full disk stopped it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.helpers.bus import Bus, free_port, make_bus
from tests.helpers.paths import REPO_ROOT
from tests.helpers.recovery import Follower, send, spawn

pytestmark = pytest.mark.chaos

KAFKA_SH = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"


def _kafka(action: str, env: dict[str, str]) -> None:
    result = subprocess.run(
        ["bash", str(KAFKA_SH), action], env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, f"kafka.sh {action}:\n{result.stdout}\n{result.stderr}"


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    port = free_port()
    env = {
        **os.environ,
        "STIXBUS_HOME": str(tmp_path / "kafka-home"),
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_HEAP": "-Xms256m -Xmx512m",
        "STIXBUS_KAFKA_SECURITY": "plaintext",
    }
    _kafka("up", env)
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        _kafka("down", env)


def _readyz(bus: Bus) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(bus.web + "/readyz", timeout=3) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"{}")


async def _arrives(bus: Bus, tag: str, timeout: float) -> bool:
    async with Follower(bus, bus.names.deliver("bank-a")) as follower:
        await follower.consumer.seek_to_beginning()
        return await follower.wait_for(tag, timeout) is not None


def test_lost_broker_one_line_then_resumes(
    own_broker: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    bootstrap, kafka_env = own_broker
    bus = make_bus(bootstrap, tmp_path / "bus", STIXBUS_BROKER_ERROR_LOG_SECONDS="5")
    (tmp_path / "bus").mkdir(exist_ok=True)
    try:
        bus.start()
        asyncio.run(send(bus, "before-outage"))
        assert asyncio.run(_arrives(bus, "before-outage", 60)), bus.log_tail()
        log = bus.home / "worker.log"
        mark = log.stat().st_size

        _kafka("down", kafka_env)
        time.sleep(16)
        outage = log.read_bytes()[mark:].decode(errors="replace").splitlines()
        assert bus.proc is not None and bus.proc.poll() is None, "the worker exited"
        plain = [line for line in outage if "Kafka broker unreachable at" in line]
        errors = [line for line in outage if "[ERROR]" in line]
        assert 2 <= len(plain) <= 5, outage[-40:]
        assert len(errors) <= len(plain) + 10, errors[:40]  # was ~700 ERROR lines a second
        status, body = _readyz(bus)
        assert status == 503 and body.get("broker_reachable") is False, body
        cli = bus.cli("publish", "--as", "cert", "-", stdin=b"{}")
        lines = cli.stderr.decode().strip().splitlines()
        assert cli.returncode == 1 and len(lines) == 1, lines
        assert lines[0].startswith(f"stixbus: cannot reach the Kafka broker at {bootstrap}")

        _kafka("up", kafka_env)
        bus.wait_ready(120)
        asyncio.run(send(bus, "after-outage"))
        assert asyncio.run(_arrives(bus, "after-outage", 90)), bus.log_tail()
    finally:
        bus.stop(signal.SIGKILL)


def _mount_tmpfs(path: Path, size: str) -> list[str]:
    path.mkdir(parents=True, exist_ok=True)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    result = subprocess.run(
        [*sudo, "mount", "-t", "tmpfs", "-o", f"size={size},mode=0700,uid={os.getuid()}", "tmpfs",
         str(path)], capture_output=True, text=True
    )  # fmt: skip
    assert result.returncode == 0, f"cannot mount a tmpfs (needs root or sudo): {result.stderr}"
    return sudo


def test_full_disk_under_the_worker_state_loses_nothing(bootstrap: str, tmp_path: Path) -> None:
    home = tmp_path / "small-disk"
    sudo = _mount_tmpfs(home, "64m")
    bus: Bus | None = None
    try:
        bus = make_bus(bootstrap, home, STIXBUS_STORE="rocksdb://")
        bus.start()
        asyncio.run(send(bus, "before-full"))
        assert asyncio.run(_arrives(bus, "before-full", 60)), bus.log_tail()
        filler = home / "filler"
        with filler.open("wb") as out:  # fill it to the last byte: ENOSPC from the kernel
            try:
                while True:
                    out.write(b"\0" * (1 << 20))
                    out.flush()
            except OSError:
                pass
        for n in range(20):
            asyncio.run(send(bus, f"while-full-{n}"))
        time.sleep(10)
        during = (home / "worker.log").read_text(errors="replace")
        stopped = bus.proc is not None and bus.proc.poll() is not None
        print(f"full disk: worker {'exited' if stopped else 'still running'}; "
              f"'No space left' in its log: {'No space left' in during}")  # fmt: skip
        filler.unlink()
        if bus.proc is not None and bus.proc.poll() is not None:  # the full disk stopped it
            spawn(bus)
        bus.wait_ready(90)
        for n in range(20):
            assert asyncio.run(_arrives(bus, f"while-full-{n}", 60)), bus.log_tail()
    finally:
        if bus is not None:
            bus.stop(signal.SIGKILL)
        subprocess.run([*sudo, "umount", "-l", str(home)], check=False)
        shutil.rmtree(home, ignore_errors=True)
