"""A real `stixbus taxii serve` process next to a test bus, and HTTP helpers for it."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from egress.credentials import add_credential
from stixbus.core.taxii import TAXII_MEDIA, collection_id
from tests.helpers.bus import Bus, free_port
from tests.helpers.paths import REPO_ROOT


@dataclass
class TaxiiServer:
    bus: Bus
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    passwords: dict[str, str] = field(default_factory=dict)  # org -> basic password
    ca: str | None = None  # CA bundle to verify the server's certificate with (TLS)

    @property
    def credentials_file(self) -> Path:
        return self.bus.home / "taxii-credentials.yaml"

    @property
    def scheme(self) -> str:
        return "https" if self.env.get("STIXBUS_TAXII_TLS") == "true" else "http"

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/taxii2/"

    @property
    def root(self) -> str:
        return self.base + "feeds/"

    def collection(self, org: str) -> str:
        return self.root + f"collections/{collection_id(self.bus.prefix, org)}/"

    def add(self, org: str) -> str:
        _, password = add_credential(self.credentials_file, org)
        self.passwords[org] = password
        return password

    def auth(self, org: str) -> str:
        raw = f"{org}:{self.passwords[org]}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def start(self, wait_loaded: bool = True) -> None:
        env = {
            **self.bus.env,
            "STIXBUS_TAXII_PORT": str(self.port),
            "STIXBUS_TAXII_CREDENTIALS_FILE": str(self.credentials_file),
            "STIXBUS_TAXII_TLS": "false",
            **self.env,
        }
        log = (self.bus.home / "taxii.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stixbus.cli.main", "taxii", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        self.wait_ready(wait_loaded)

    def wait_ready(self, wait_loaded: bool, timeout: float = 60) -> None:
        org = next(iter(self.passwords))
        deadline = time.monotonic() + timeout
        url = self.collection(org) + ("manifest/?limit=1" if wait_loaded else "")
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"taxii server exited {self.proc.returncode}:\n{self.log()}")
            try:
                resp = self.get(url, org, timeout=5)
                if resp.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"taxii server not ready after {timeout}s:\n{self.log()}")

    def get(
        self,
        url: str,
        org: str | None,
        timeout: float = 30,
        params: dict[str, str] | None = None,
        **headers: str,
    ) -> requests.Response:
        sent = {"Accept": TAXII_MEDIA, **headers}
        if org is not None and "Authorization" not in headers:
            sent["Authorization"] = self.auth(org)
        return requests.get(
            url, params=params, headers=sent, timeout=timeout, verify=self.ca or True
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def log(self) -> str:
        path = self.bus.home / "taxii.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""
