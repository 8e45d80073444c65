"""docker-compose.yml must agree with the local scripts and settings (Docker does not run here)."""

from __future__ import annotations

import yaml

from stixbus import REPO_ROOT
from stixbus.settings import Settings

DEFAULTS = {name: f.default for name, f in Settings.model_fields.items()}
COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
KAFKA_SCRIPT = (REPO_ROOT / "deploy" / "kafka" / "kafka.sh").read_text()
POM = (REPO_ROOT / "deploy" / "kafka" / "pom.xml").read_text()


def test_services_present() -> None:
    assert {"kafka", "worker", "prometheus", "grafana"} <= set(COMPOSE["services"])


def test_worker_env_names_are_real_settings_with_local_defaults() -> None:
    env = COMPOSE["services"]["worker"]["environment"]
    fields = {f"STIXBUS_{name.upper()}" for name in Settings.model_fields}
    unknown = set(env) - fields
    assert not unknown, f"compose sets env vars stixbus does not read: {unknown}"
    # Compare with the documented defaults, not this process's environment (tests override it).
    assert env["STIXBUS_TOPIC_PREFIX"] == DEFAULTS["topic_prefix"]
    assert int(env["STIXBUS_WEB_PORT"]) == DEFAULTS["web_port"]
    assert env["STIXBUS_APP_ID"] == DEFAULTS["app_id"]
    assert int(env["STIXBUS_PARTITIONS"]) == DEFAULTS["partitions"]


def test_ports_match_local_stack() -> None:
    default_port = str(DEFAULTS["bootstrap_servers"]).rsplit(":", 1)[1]
    assert f'port="${{KAFKA_PORT:-{default_port}}}"' in KAFKA_SCRIPT
    kafka_ports = COMPOSE["services"]["kafka"]["ports"]
    assert f"127.0.0.1:{default_port}:9092" in kafka_ports
    worker_ports = COMPOSE["services"]["worker"]["ports"]
    web_port = DEFAULTS["web_port"]
    assert f"127.0.0.1:{web_port}:{web_port}" in worker_ports


def test_same_kafka_version_as_local_jars() -> None:
    image = COMPOSE["services"]["kafka"]["image"]
    version = image.split(":", 1)[1]
    assert f"<kafka.version>{version}</kafka.version>" in POM


def test_prometheus_scrapes_the_worker_and_grafana_is_provisioned() -> None:
    prom = yaml.safe_load(
        (REPO_ROOT / "deploy" / "prometheus" / "prometheus-compose.yml").read_text()
    )
    targets = [
        t for job in prom["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert f"worker:{DEFAULTS['web_port']}" in targets
    mounts = COMPOSE["services"]["grafana"]["volumes"]
    for mount in mounts:
        host = mount.split(":", 1)[0]
        assert (REPO_ROOT / host).exists(), f"grafana mounts missing {host}"
