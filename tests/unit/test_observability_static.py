"""Static checks of the operator artefacts: metric definitions, alert rules, Grafana dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from stixbus import metrics
from stixbus.metrics import parse_metrics
from tests.helpers.paths import REPO_ROOT

PROM_DIR = REPO_ROOT / "deploy" / "prometheus"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "stixbus.json"

# Names that are not ours but may appear in dashboards/rules: Prometheus's own series.
EXTERNAL_METRICS = {"up"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
                "and", "or", "unless", "inf", "nan"}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (enough PromQL for our queries)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or name.lower() in PROMQL_WORDS:
            continue  # a function or a keyword
        if re.fullmatch(r"\d+(\.\d+)?(e\d+)?", name):
            continue
        names.add(name)
    return names


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    return exprs


def test_promql_name_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(stixbus_delivery_latency_seconds_bucket{a="b"}'
        "[5m]))) / on(x) time() - max by (publisher) (foo_total) and bool bar"
    )
    assert promql_metric_names(expr) == {
        "stixbus_delivery_latency_seconds_bucket",
        "foo_total",
        "bar",
    }


def test_dashboard_uses_only_existing_metrics() -> None:
    known = metrics.metric_names() | EXTERNAL_METRICS
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert used, "no metric names parsed from the dashboard"
    assert used <= known, f"dashboard queries unknown metrics: {sorted(used - known)}"
    # Every question the dashboard must answer has a panel.
    for needed in (
        "stixbus_objects_received_total",
        "stixbus_deliveries_total",
        "stixbus_objects_rejected_total",
        "stixbus_delivery_latency_seconds_bucket",
        "stixbus_subscriber_lag_records",
        "stixbus_agreement_version",
    ):
        assert needed in used


def test_rules_use_only_existing_metrics() -> None:
    import yaml

    rules = yaml.safe_load((PROM_DIR / "stixbus.rules.yml").read_text())
    records = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    known = metrics.metric_names() | EXTERNAL_METRICS | records
    for group in rules["groups"]:
        for rule in group["rules"]:
            unknown = promql_metric_names(rule["expr"]) - known
            assert not unknown, f"{rule.get('alert', rule.get('record'))}: {unknown}"


def test_metric_names_follow_conventions() -> None:
    for metric in metrics.ALL_METRICS:
        (family,) = metric.describe()
        assert family.name.startswith("stixbus_")
        if family.type == "counter":
            assert family.name + "_total" in metrics.metric_names()
        if family.type == "histogram":
            assert family.name.endswith("_seconds")
        labels = set(metric._labelnames)
        # list: a warninglist the guard loads or a sink's list (bounded), cause: valid_until|max_age
        assert labels <= {"publisher", "subscriber", "agreement", "reason", "list", "cause", "sink"}


def test_labels_are_bounded() -> None:
    metrics.observe_rejections("cert", ["invalid_json", "made-up reason", "x" * 500])
    metrics.observe_denial("no such reason code at all")
    text = generate_latest().decode()
    snap = parse_metrics(text)
    reasons = snap.by("stixbus_objects_rejected_total", "reason", publisher="cert")
    assert set(reasons) <= {r.value for r in metrics.Reason} | {metrics.OTHER_REASON}
    assert reasons[metrics.OTHER_REASON] >= 2
    assert "no such reason code at all" not in text
    metrics.observe_guard_hits(["rfc5735", "Not A List Name!" + "x" * 500])
    lists = parse_metrics(generate_latest().decode()).by("stixbus_guard_hits_total", "list")
    assert lists["rfc5735"] >= 1 and set(lists) <= {"rfc5735", metrics.OTHER_REASON}


def test_agreement_version_retire() -> None:
    def versions() -> dict[str, float]:
        snap = parse_metrics(generate_latest().decode())
        return snap.by("stixbus_agreement_version", "agreement")

    metrics.set_agreement_version("agr-test", 3)
    assert versions()["agr-test"] == 3.0
    metrics.retire_agreement("agr-test")
    metrics.retire_agreement("agr-test")  # idempotent
    assert "agr-test" not in versions()


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not installed: run the tests with `make test` (deploy/test.sh)")
    return path


def test_promtool_check_rules_and_config() -> None:
    promtool = _promtool()
    for args in (
        ["check", "rules", str(PROM_DIR / "stixbus.rules.yml")],
        ["check", "config", str(PROM_DIR / "prometheus.yml")],
    ):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = subprocess.run(
        [_promtool(), "test", "rules", "stixbus.rules.test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROM_DIR,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_grafana_provisioning_files_parse() -> None:
    import yaml

    root = REPO_ROOT / "deploy" / "grafana" / "provisioning"
    ds = yaml.safe_load((root / "datasources" / "stixbus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        if "datasource" in panel:
            assert panel["datasource"]["uid"] == uid
    prov = yaml.safe_load((root / "dashboards" / "stixbus.yml").read_text())
    assert prov["providers"][0]["type"] == "file"
    assert Path(prov["providers"][0]["options"]["path"]).is_absolute()
