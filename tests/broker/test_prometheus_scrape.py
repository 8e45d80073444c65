"""A real Prometheus server scrapes the real test worker while we publish; then we ask it.

Also runs `stixbus status` against the same worker (live numbers from /metrics + broker).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.bus import Bus, free_port, make_bus
from tests.helpers.paths import REPO_ROOT

pytestmark = pytest.mark.kafka

RULES = REPO_ROOT / "deploy" / "prometheus" / "stixbus.rules.yml"
CERT_BUNDLE = REPO_ROOT / "deploy" / "demo" / "cert.json"
CERT_SUBMISSIONS = 3


@pytest.fixture(scope="module")
def obs_bus(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    """The test worker, sampling subscriber lag every second."""
    handle = make_bus(
        bootstrap, tmp_path_factory.mktemp("obs"), STIXBUS_OBSERVE_LAG_INTERVAL_SECONDS="1"
    )
    handle.start()
    yield handle
    handle.stop()


class Prometheus:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def get(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, float]:
        """Instant query → {label set rendered as 'k=v,…': value}."""
        result = self.get("/api/v1/query", query=expr)["result"]
        return {
            ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k != "__name__"): float(
                r["value"][1]
            )
            for r in result
        }

    def wait_for(self, expr: str, want: float, timeout: float = 45.0) -> float:
        """Poll until the query's single value equals `want`; returns the last value seen."""
        deadline = time.monotonic() + timeout
        last: dict[str, float] = {}
        while time.monotonic() < deadline:
            last = self.query(expr)
            if len(last) == 1 and next(iter(last.values())) == want:
                return want
            time.sleep(0.5)
        raise AssertionError(f"{expr} = {last}, wanted {want}\n{self.log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def prometheus(obs_bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not installed: run the tests with `make test` (deploy/test.sh)")
    tmp = tmp_path_factory.mktemp("prometheus")
    target = obs_bus.web.removeprefix("http://")
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: stixbus\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    log = tmp / "prometheus.log"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(prom.url + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prometheus did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_prometheus_scrapes_the_bus(obs_bus: Bus, prometheus: Prometheus) -> None:
    prometheus.wait_for('up{job="stixbus"}', 1.0)
    for _ in range(CERT_SUBMISSIONS):
        obs_bus.publish("cert", CERT_BUNDLE.read_bytes())
    obs_bus.publish("isp-one", b'{"type": "bundle", "objects": [')  # truncated JSON
    obs_bus.publish("isp-one", b"\xff\xfe not utf-8")

    receipts = obs_bus.objects(obs_bus.names.receipts("cert"), expect=CERT_SUBMISSIONS)
    assert len(receipts) == CERT_SUBMISSIONS
    cert_objects = sum(r["accepted"] + r["rejected"] for r in receipts)
    assert cert_objects > 0
    isp_receipts = obs_bus.objects(obs_bus.names.receipts("isp-one"), expect=2)
    isp_reasons = sorted(rej["reason"] for r in isp_receipts for rej in r["rejections"])
    assert len(isp_reasons) == 2

    prometheus.wait_for('stixbus_submissions_total{publisher="cert"}', CERT_SUBMISSIONS)
    prometheus.wait_for('stixbus_objects_received_total{publisher="cert"}', cert_objects)
    prometheus.wait_for('stixbus_submissions_total{publisher="isp-one"}', 2)
    for reason in set(isp_reasons):
        prometheus.wait_for(
            f'stixbus_objects_rejected_total{{publisher="isp-one",reason="{reason}"}}',
            isp_reasons.count(reason),
        )
    # Orgs that sent nothing have a 0 series (so "publisher silent" alerts can fire).
    assert prometheus.query('stixbus_submissions_total{publisher="bank-b"}') == {
        "instance=" + obs_bus.web.removeprefix("http://") + ",job=stixbus,publisher=bank-b": 0.0
    }
    # Lag is sampled from the broker for every subscriber (nobody consumes here: lag >= 0).
    deadline = time.monotonic() + 30
    lags: dict[str, float] = {}
    while time.monotonic() < deadline:
        lags = prometheus.query("max by (subscriber) (stixbus_subscriber_lag_records)")
        if len(lags) == len(obs_bus.registry.subscribers):
            break
        time.sleep(0.5)
    assert len(lags) == len(obs_bus.registry.subscribers), lags
    assert all(v >= 0 for v in lags.values())
    # Faust's own sensor is on the same /metrics.
    assert sum(prometheus.query("faust_messages_received_total").values()) > 0
    # The alert rules load and evaluate against the real series.
    groups = prometheus.get("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 7
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]


def test_stixbus_status_shows_live_numbers(obs_bus: Bus, prometheus: Prometheus) -> None:
    # Runs after the scrape test in this module: cert has published CERT_SUBMISSIONS bundles.
    obs_bus.objects(obs_bus.names.receipts("cert"), expect=CERT_SUBMISSIONS)
    obs_bus.env["COLUMNS"] = "200"  # one table row per line
    result = obs_bus.cli("status", "--window", "1", timeout=60)
    text = result.stdout.decode()
    assert result.returncode == 0, text + result.stderr.decode()
    assert "ready" in text
    assert "reachable" in text
    cert_row = next(line for line in text.splitlines() if "│ cert " in line)
    cells = [c.strip() for c in cert_row.split("│")[1:-1]]
    assert cells[0] == "cert"
    assert cells[1] == str(CERT_SUBMISSIONS)
    isp_row = next(line for line in text.splitlines() if "│ isp-one " in line)
    assert "invalid_" in isp_row or "not_" in isp_row or "too_" in isp_row


def test_stixbus_status_worker_down(obs_bus: Bus) -> None:
    result = obs_bus.cli("status", "--window", "0", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "unreachable" in result.stdout.decode()
