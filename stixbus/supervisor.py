"""Start and stop the local worker in the background, by PID, with its log in a file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

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


def http_probe(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET one of the worker's HTTP endpoints: (status, body), whatever the status.  No retries
    (callers poll).  Raises OSError (requests' errors are OSErrors) when nothing answers."""
    resp = requests.get(url, timeout=timeout)
    return resp.status_code, resp.content


def readiness(settings: Settings) -> dict[str, object] | None:
    try:
        _, raw = http_probe(f"http://127.0.0.1:{settings.web_port}/readyz", timeout=2)
        body = json.loads(raw or b"{}")
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


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


# --- other long-running services of the local stack (the network sinks, ...) ------------------
def service_pid_file(settings: Settings, name: str) -> Path:
    return settings.home / f"{name}.pid"


def service_pid(settings: Settings, name: str) -> int | None:
    try:
        pid = int(service_pid_file(settings, name).read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start_service(settings: Settings, name: str, args: list[str]) -> int:
    """Start `stixbus <args>` detached with its log in <logs>/<name>.log; returns its pid (the
    running one if already started)."""
    running = service_pid(settings, name)
    if running:
        return running
    private_files()
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    log = (settings.logs_dir / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stixbus.cli.main", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=os.environ.copy(),
    )
    service_pid_file(settings, name).write_text(str(proc.pid))
    return proc.pid


def stop_service(settings: Settings, name: str, timeout: float = 15.0) -> bool:
    """SIGTERM the service by its pid file (SIGKILL after `timeout`); False if not running."""
    pid = service_pid(settings, name)
    service_pid_file(settings, name).unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return True
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    return True
