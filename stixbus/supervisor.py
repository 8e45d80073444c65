"""Start and stop the local worker in the background, by PID, with its log in a file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from stixbus.files import make_private, private_files
from stixbus.settings import Settings


def pid_file(settings: Settings) -> Path:
    return settings.home / "worker.pid"


def log_file(settings: Settings) -> Path:
    return settings.logs_dir / "worker.log"


def worker_pid(settings: Settings) -> int | None:
    try:
        pid = int(pid_file(settings).read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start_worker(settings: Settings) -> int:
    """Start `stixbus worker` detached; returns its pid (the running one if already started)."""
    running = worker_pid(settings)
    if running:
        return running
    private_files()
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    make_private(settings.logs_dir)
    log = log_file(settings).open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stixbus.cli.main", "worker"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=os.environ.copy(),
    )
    pid_file(settings).write_text(str(proc.pid))
    return proc.pid


def readiness(settings: Settings) -> dict[str, object] | None:
    try:
        url = f"http://127.0.0.1:{settings.web_port}/readyz"
        with urllib.request.urlopen(url, timeout=2) as resp:
            body: dict[str, object] = json.loads(resp.read())
            return body
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
        return body if isinstance(body, dict) else None
    except (OSError, ValueError):
        return None


def wait_ready(settings: Settings, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = readiness(settings)
        if state and state.get("ready"):
            return True
        if worker_pid(settings) is None:
            return False
        time.sleep(0.5)
    return False


def stop_worker(settings: Settings, timeout: float = 30.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; True when a worker was running."""
    pid = worker_pid(settings)
    if pid is None:
        pid_file(settings).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    pid_file(settings).unlink(missing_ok=True)
    return True


def log_tail(settings: Settings, lines: int = 30) -> str:
    try:
        return "\n".join(log_file(settings).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no worker log yet)"
