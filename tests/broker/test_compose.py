"""docker-compose.yml must agree with the local scripts and settings (Docker does not run here)."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError
from pydantic_settings import BaseSettings

from egress.credentials import add_credential
from schemas.agreement import load_agreements
from schemas.org import load_registry
from stixbus.core.taxii import TAXII_MEDIA, collection_id
from stixbus.kafka.acls import (
    ADMIN,
    EGRESS,
    WORKER,
    AclBinding,
    Operation,
    PatternType,
    ResourceType,
    derive_acls,
    principal,
)
from stixbus.kafka.admin import list_topics
from stixbus.kafka.client import read_topic
from stixbus.kafka.config import client_kwargs, read_credentials
from stixbus.kafka.topics import TopicNames
from stixbus.settings import Settings, SinkSettings, TaxiiServer
from tests.helpers.bus import free_port
from tests.helpers.dedup_samples import indicator
from tests.helpers.paths import REPO_ROOT

DEFAULTS = {name: f.default for name, f in Settings.model_fields.items()}


def _groups() -> dict[str, type[BaseSettings]]:
    """The nested settings groups (taxii, sinks, limits, retention): field -> class."""
    return {
        name: f.annotation
        for name, f in Settings.model_fields.items()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseSettings)
    }


def _group_env(group: type[BaseSettings], field: str) -> str:
    return f"{group.model_config['env_prefix']}{field}".upper()


# Every variable stixbus reads: STIXBUS_<field> and each group's STIXBUS_TAXII_<field>, ...
SETTINGS_ENV = {f"STIXBUS_{name.upper()}" for name in Settings.model_fields} | {
    _group_env(group, field) for group in _groups().values() for field in group.model_fields
}
EGRESS_SERVICES = ("taxii", "sinks")
COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
KAFKA_SCRIPT = (REPO_ROOT / "deploy" / "kafka" / "kafka.sh").read_text()
POM = (REPO_ROOT / "deploy" / "kafka" / "pom.xml").read_text()


def test_services_present() -> None:
    assert {"kafka", "worker", "prometheus", "grafana", *EGRESS_SERVICES} <= set(
        COMPOSE["services"]
    )


def test_worker_env_names_are_real_settings_with_local_defaults() -> None:
    env = COMPOSE["services"]["worker"]["environment"]
    unknown = set(env) - SETTINGS_ENV
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
    # Published on the host's default port (the HOST listener listens on another container port).
    assert any(p.startswith(f"127.0.0.1:{default_port}:") for p in kafka_ports)
    # The worker's web port is not published (issue #12, finding 2): see the network test.
    assert "ports" not in COMPOSE["services"]["worker"]


def test_worker_web_is_reachable_on_the_monitoring_network_only() -> None:
    services, networks = COMPOSE["services"], COMPOSE["networks"]
    worker = services["worker"]
    monitoring = networks["monitoring"]
    assert monitoring["internal"] is True
    attached = {
        name
        for name, svc in services.items()
        if "monitoring" in (svc.get("networks") or {"default": None})
    }
    assert attached == {"worker", "prometheus"}
    # The web server binds the worker's address on that network, nothing else.
    address = worker["networks"]["monitoring"]["ipv4_address"]
    assert worker["environment"]["STIXBUS_WEB_HOST"] == address
    subnet = monitoring["ipam"]["config"][0]["subnet"]
    import ipaddress

    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
    # Every service names its networks (none falls back to the default network).
    assert all("networks" in svc for svc in services.values())
    assert not set(worker["networks"]) - {"bus", "monitoring"}
    assert DEFAULTS["web_host"] == "127.0.0.1"  # outside compose: loopback only


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


# -- the egress services: taxii and sinks ----------------------------------------------------------

# What each egress service publishes on the Docker host: (host port, container port/protocol).
EGRESS_PORTS = {
    "taxii": {("6444", "6444/tcp")},
    "sinks": {("6445", "6445/tcp"), ("6453", "6453/tcp"), ("6453", "6453/udp")},
}


def test_egress_ports_are_the_settings_defaults_published_on_loopback_only() -> None:
    taxii, sinks = TaxiiServer.model_fields, SinkSettings.model_fields
    port = str(taxii["port"].default)
    assert EGRESS_PORTS["taxii"] == {(port, f"{port}/tcp")}
    http, dns = str(sinks["http_port"].default), str(sinks["dns_port"].default)
    assert EGRESS_PORTS["sinks"] == {
        (http, f"{http}/tcp"),
        (dns, f"{dns}/tcp"),
        (dns, f"{dns}/udp"),  # RPZ: TCP and UDP
    }
    for service, expected in EGRESS_PORTS.items():
        published = set()
        for mapping in SERVICES[service]["ports"]:
            host_ip, host_port, container = mapping.split(":")
            assert host_ip == "127.0.0.1", f"{service} publishes {mapping} beyond loopback"
            published.add((host_port, container if "/" in container else container + "/tcp"))
        assert published == expected, service
    # Inside its container each server binds every address (the published port reaches it
    # through the bridge) on the port the settings default to.
    for service, prefix, ports in (
        ("taxii", "STIXBUS_TAXII_", ("PORT",)),
        ("sinks", "STIXBUS_SINKS_", ("HTTP_PORT", "DNS_PORT")),
    ):
        env = SERVICES[service]["environment"]
        assert env[prefix + "HOST"] == "0.0.0.0"
        container_ports = {c.split("/")[0] for _, c in EGRESS_PORTS[service]}
        assert {env[prefix + p] for p in ports} == container_ports
    assert TaxiiServer.model_fields["host"].default == "127.0.0.1"  # outside compose: loopback
    assert SinkSettings.model_fields["host"].default == "127.0.0.1"


def test_egress_services_run_hardened_like_the_worker_after_setup() -> None:
    worker, setup = SERVICES["worker"], SERVICES["setup"]
    setup_volumes = {
        v.split(":")[0]: v.split(":")[1] for v in setup["volumes"] if isinstance(v, str)
    }
    chown = next(step for step in _shell_steps("setup") if step.startswith("chown ${STIXBUS_UID"))
    data_volumes = set()
    for service in EGRESS_SERVICES:
        svc = SERVICES[service]
        assert svc["image"] == worker["image"], service
        for key in ("user", "read_only", "tmpfs", "security_opt", "cap_drop", "depends_on"):
            assert svc[key] == worker[key], f"{service} {key}: {svc[key]!r} != {worker[key]!r}"
        assert "privileged" not in svc and "cap_add" not in svc
        assert svc["command"] == [service, "serve"]  # `stixbus taxii serve`, `stixbus sinks serve`
        assert svc["networks"] == ["bus"]  # the broker; not the worker's monitoring network
        # Its own state volume at STIXBUS_HOME, which setup hands to the services' user.
        (volume,) = [
            v.split(":")[0] for v in svc["volumes"] if isinstance(v, str) and v.endswith(":/data")
        ]
        assert svc["environment"]["STIXBUS_HOME"] == "/data"
        assert volume in COMPOSE["volumes"] and volume != "worker-data"
        assert setup_volumes[volume] in chown.split(), f"setup does not chown {volume}"
        data_volumes.add(volume)
        # The image's healthcheck asks the worker's web port: each service checks its own.
        health = " ".join(svc["healthcheck"]["test"])
        assert "6066" not in health and "STIXBUS_" in health
    assert len(data_volumes) == len(EGRESS_SERVICES)


def test_egress_tls_and_credentials_come_from_the_mounted_secrets() -> None:
    taxii = _settings(SERVICES["taxii"]["environment"])
    assert taxii.taxii.tls is True
    assert str(taxii.taxii.tls_cert) == f"{SECRETS_MOUNT}/taxii.pem"
    assert str(taxii.taxii.tls_key) == f"{SECRETS_MOUNT}/taxii.key"
    assert taxii.taxii.public_url == f"https://localhost:{taxii.taxii.port}"
    sinks = _settings(SERVICES["sinks"]["environment"])
    # Bound beyond loopback the lists server refuses plain HTTP: it must have its certificate.
    assert str(sinks.sinks.tls_cert) == f"{SECRETS_MOUNT}/sinks.pem"
    assert str(sinks.sinks.tls_key) == f"{SECRETS_MOUNT}/sinks.key"
    assert str(sinks.sinks.config) == "/app/deploy/sinks.yaml"
    assert "./deploy/sinks.yaml:/app/deploy/sinks.yaml:ro" in SERVICES["sinks"]["volumes"]
    # One pull-credentials file for both (the lists take the TAXII credentials), in the
    # secrets folder, where `stixbus taxii credentials add` run in setup writes it.
    for settings in (taxii, sinks, _settings(SERVICES["setup"]["environment"])):
        assert str(settings.taxii.credentials_file) == f"{SECRETS_MOUNT}/taxii-credentials.yaml"
    for name in ("taxii", "sinks"):  # written by compose-secrets (SAN checked below, live)
        assert f"make_server_cert {name}" in KAFKA_SCRIPT


def test_the_image_holds_every_package_and_the_sinks_config() -> None:
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    match = re.search(r"^include = \[(.*)\]$", pyproject, re.MULTILINE)
    assert match
    packages = [p.strip().strip('"').rstrip("*") for p in match.group(1).split(",")]
    assert "egress" in packages
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    for package in packages:
        assert f"COPY {package} ./{package}" in dockerfile, f"the image lacks {package}/"
    assert "deploy/sinks.yaml" in dockerfile


# -- security: SASL_SSL by default ----------------------------------------------------------------
#
# `deploy/kafka/kafka.sh compose-secrets` generates what the containers mount; the tests below
# check the compose file against it, then prove the generated broker config is valid by running
# the broker service's own command (format --add-scram, start) with the local jars, and the setup
# service's own steps, then connecting over SASL_SSL as the worker, the admin and an org.

SERVICES = COMPOSE["services"]
KAFKA_DIR = REPO_ROOT / "deploy" / "kafka"
LIB = KAFKA_DIR / "lib"


def _script_value(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)$", KAFKA_SCRIPT, re.MULTILINE)
    assert match, f"kafka.sh defines no {name}"
    return match.group(1)


SECRETS_MOUNT = _script_value("compose_secdir")  # /etc/stixbus/secrets in every container


def _secrets_mount(service: str) -> dict[str, Any]:
    mounts = [
        v
        for v in SERVICES[service]["volumes"]
        if isinstance(v, dict) and v.get("target") == SECRETS_MOUNT
    ]
    assert len(mounts) == 1, f"{service} does not mount the secrets folder at {SECRETS_MOUNT}"
    return mounts[0]


def _properties(text: str) -> dict[str, str]:
    props = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def _port_mapping(service: str) -> tuple[str, str, str]:
    (mapping,) = SERVICES[service]["ports"]
    host_ip, host_port, container_port = mapping.split(":")
    return host_ip, host_port, container_port


def _settings(env: dict[str, str]) -> Settings:
    """Settings as a container with only `env` sees them (this process's STIXBUS_* ignored)."""
    nothing = "STIXBUS_TEST_NOTHING_"
    fields: dict[str, Any] = {
        name: env[f"STIXBUS_{name.upper()}"]
        for name in Settings.model_fields
        if f"STIXBUS_{name.upper()}" in env
    }
    for name, group in _groups().items():
        given: dict[str, Any] = {
            f: env[_group_env(group, f)] for f in group.model_fields if _group_env(group, f) in env
        }
        fields[name] = group(_env_prefix=nothing, _env_file=None, **given)
    return Settings(_env_prefix=nothing, _env_file=None, **fields)


def _shell_steps(service: str) -> list[str]:
    """The steps of a service whose entrypoint is `/bin/sh -c` and command `a && b && c`."""
    svc = SERVICES[service]
    assert svc["entrypoint"] == ["/bin/sh", "-c"], svc
    return [step.strip() for step in svc["command"].split("&&")]


def test_every_stixbus_container_speaks_sasl_ssl_with_mounted_secrets() -> None:
    for service in ("setup", "worker", *EGRESS_SERVICES):
        env = SERVICES[service]["environment"]
        assert not set(env) - SETTINGS_ENV, f"{service} sets env vars stixbus does not read"
        settings = _settings(env)
        assert settings.security_protocol == "SASL_SSL"
        assert settings.sasl_mechanism == "SCRAM-SHA-512"
        assert "STIXBUS_SASL_USERNAME" not in env  # each command acts as its own principal
        assert str(settings.ssl_cafile) == f"{SECRETS_MOUNT}/ca.pem"
        assert str(settings.credentials_file) == f"{SECRETS_MOUNT}/credentials.json"
        assert settings.bootstrap_servers == "kafka:9092"
        mount = _secrets_mount(service)
        assert mount["type"] == "bind" and mount["bind"]["create_host_path"] is False
        assert mount["source"] == "${STIXBUS_HOME:-./.stixbus}/secrets"
        # Only setup writes there (credentials.json); the worker and the broker only read.
        assert mount["read_only"] is (service != "setup")
    assert _secrets_mount("kafka")["read_only"] is True


def test_setup_applies_acls_then_agreements_before_the_worker() -> None:
    setup, worker = SERVICES["setup"], SERVICES["worker"]
    steps = _shell_steps("setup")
    stixbus_steps = [s for s in steps if s.startswith("stixbus ")]
    assert stixbus_steps[0] == "stixbus security apply"
    assert stixbus_steps.index("stixbus topics") < next(
        i for i, s in enumerate(stixbus_steps) if s.startswith("stixbus agreements apply")
    ), "the agreements topic must exist before agreements are published"
    assert setup["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert worker["depends_on"] == {"setup": {"condition": "service_completed_successfully"}}
    # The image's entrypoint is `stixbus` (Dockerfile), so the worker's command is `worker`.
    assert worker["command"] == ["worker"]


def test_broker_command_formats_with_admin_scram_and_starts_generated_config() -> None:
    kafka = SERVICES["kafka"]
    (script,) = kafka["command"]
    props = "$$s/compose-server.properties"  # $$: a literal $ for compose, the shell's $s
    assert f"s={SECRETS_MOUNT}" in script
    # Formats from a java @argument file: the admin password is on no command line (`ps`
    # inside the container or on the Docker host would show it), unlike the former
    # `kafka-storage.sh format --add-scram "...password=$ADMIN_PASSWORD"`.
    assert "java -cp '/opt/kafka/libs/*' \"@$$s/compose-format.args\"" in script
    assert "ADMIN_PASSWORD" not in script and "--add-scram" not in script
    assert f'exec /opt/kafka/bin/kafka-server-start.sh "{props}"' in script
    health = " ".join(kafka["healthcheck"]["test"])
    assert f"--command-config {SECRETS_MOUNT}/compose-admin.properties" in health
    assert "--bootstrap-server kafka:9092" in health


@dataclass
class ComposeBroker:
    home: Path  # the host's STIXBUS_HOME; <home>/secrets plays /etc/stixbus/secrets
    original: dict[str, str]  # compose-server.properties as generated (container view)
    client_port: int  # the CLIENT listener (kafka:9092 inside compose)
    host_port: int  # the HOST listener (127.0.0.1:9092 on the Docker host)
    local: dict[str, str]  # container path / host name -> this machine

    @property
    def secrets(self) -> Path:
        return self.home / "secrets"

    def localise(self, text: str) -> str:
        """One pass, so a replacement is never rewritten again."""
        return _replace(text, self.local)

    def data_dir(self, service: str) -> Path:
        """Where the service's /data volume lives on this machine."""
        volumes = SERVICES[service].get("volumes", [])
        named = [v.split(":")[0] for v in volumes if isinstance(v, str) and v.endswith(":/data")]
        return self.home.parent / (named[0] if named else "worker-data")

    def env(self, service: str) -> dict[str, str]:
        """The service's environment as this machine sees it (paths and host names rewritten)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("STIXBUS_")}
        compose_env = SERVICES[service]["environment"]
        local = dict(self.local, **{"/data": str(self.data_dir(service))})
        return {**base, **{k: _replace(str(v), local) for k, v in compose_env.items()}}


def _replace(text: str, mapping: dict[str, str]) -> str:
    keys = sorted(mapping, key=len, reverse=True)
    return re.sub("|".join(re.escape(k) for k in keys), lambda m: mapping[m.group(0)], text)


def _local_listeners(text: str, ports: dict[tuple[str, str], int]) -> str:
    def swap(match: re.Match[str]) -> str:
        return f"127.0.0.1:{ports[(match.group(1), match.group(2))]}"

    return re.sub(r"\b(0\.0\.0\.0|kafka|127\.0\.0\.1):(\d+)\b", swap, text)


def _wait_started(proc: subprocess.Popen[bytes], logs: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"compose broker exited {proc.returncode}:\n{_tail(logs)}")
        if "Kafka Server started" in _read(logs / "server.log"):
            return
        time.sleep(0.3)
    raise AssertionError(f"compose broker not started after {timeout}s:\n{_tail(logs)}")


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def _tail(logs: Path) -> str:
    return "\n".join(_read(logs / name)[-3000:] for name in ("stdout.log", "server.log"))


@pytest.fixture(scope="module")
def compose_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeBroker]:
    if not (LIB / ".complete").is_file() or shutil.which("java") is None:
        pytest.fail("needs java and the Kafka jars: run via `make test`, which fetches them")
    root = tmp_path_factory.mktemp("compose")
    home = root / "home"
    generated = subprocess.run(
        ["bash", str(KAFKA_DIR / "kafka.sh"), "compose-secrets"],
        env={**os.environ, "STIXBUS_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert generated.returncode == 0, generated.stderr
    secrets = home / "secrets"
    server_props = secrets / "compose-server.properties"
    original = _properties(server_props.read_text())

    # The container's view -> this machine: the mounted folders, and the broker's listeners
    # (container ports 9092/19092/9093, host name kafka, the published 127.0.0.1:9092) -> free
    # ports on 127.0.0.1.  Everything else of the generated config is used as it is.
    client_port, host_port, controller_port = free_port(), free_port(), free_port()
    _, published, host_container_port = _port_mapping("kafka")
    listeners = {
        ("0.0.0.0", "9092"): client_port,
        ("kafka", "9092"): client_port,
        ("0.0.0.0", host_container_port): host_port,
        ("127.0.0.1", published): host_port,
        ("kafka", "9093"): controller_port,
    }
    (data_volume,) = [v for v in SERVICES["kafka"]["volumes"] if isinstance(v, str)]
    data_target = data_volume.split(":", 1)[1]
    local = {
        SECRETS_MOUNT: str(secrets),
        data_target: str(root / "kafka-data"),
        "kafka:9092": f"127.0.0.1:{client_port}",
        "/app/": f"{REPO_ROOT}/",
        "/data": str(root / "worker-data"),
    }
    broker = ComposeBroker(home, original, client_port, host_port, local)
    server_props.write_text(broker.localise(_local_listeners(server_props.read_text(), listeners)))
    admin_props = secrets / "compose-admin.properties"
    admin_props.write_text(broker.localise(admin_props.read_text()))
    format_args = secrets / "compose-format.args"
    format_args.write_text(broker.localise(format_args.read_text()))

    # The broker service's command, with /opt/kafka/bin/* played by the local jars.
    bin_dir, logs = root / "bin", root / "logs"
    bin_dir.mkdir()
    logs.mkdir()
    java = f"exec java -cp '{LIB}/*'"
    wrappers = {
        "kafka-storage.sh": f"{java} -Dlog4j2.configurationFile={KAFKA_DIR}/log4j2-quiet.properties"
        ' kafka.tools.StorageTool "$@"',
        "kafka-server-start.sh": f"{java} -Xms256m -Xmx512m -Djava.awt.headless=true"
        f" -Dkafka.logs.dir={logs} -Dlog4j2.configurationFile={KAFKA_DIR}/log4j2.properties"
        ' kafka.Kafka "$@"',
    }
    for name, body in wrappers.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (script,) = SERVICES["kafka"]["command"]
    script = broker.localise(
        script.replace("$$", "$")
        .replace("/opt/kafka/bin", str(bin_dir))
        .replace("/opt/kafka/libs", str(LIB))
    )
    with (logs / "stdout.log").open("wb") as out:
        proc = subprocess.Popen(
            ["sh", "-c", script], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_started(proc, logs)
        yield broker
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_generated_broker_config_matches_compose(compose_broker: ComposeBroker) -> None:
    props = compose_broker.original
    assert props["listener.security.protocol.map"] == (
        "CLIENT:SASL_SSL,HOST:SASL_SSL,CONTROLLER:SASL_PLAINTEXT"
    )
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["listener.name.client.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["listener.name.host.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
    assert props["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert props["authorizer.class.name"].endswith("metadata.authorizer.StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:admin"
    for key in ("ssl.keystore.location", "ssl.truststore.location"):
        assert props[key].startswith(f"{SECRETS_MOUNT}/")
    (data_volume,) = [v for v in SERVICES["kafka"]["volumes"] if isinstance(v, str)]
    assert props["log.dirs"].startswith(data_volume.split(":", 1)[1] + "/")
    # The worker's bootstrap is the internal listener; the published port is the HOST listener.
    worker_bootstrap = SERVICES["worker"]["environment"]["STIXBUS_BOOTSTRAP_SERVERS"]
    host_ip, published, container_port = _port_mapping("kafka")
    assert props["advertised.listeners"] == (
        f"CLIENT://{worker_bootstrap},HOST://{host_ip}:{published}"
    )
    assert f"HOST://0.0.0.0:{container_port}" in props["listeners"]
    assert props["controller.quorum.voters"] == "1@kafka:9093"
    assert SERVICES["kafka"]["hostname"] == "kafka"
    default_port = str(DEFAULTS["bootstrap_servers"]).rsplit(":", 1)[1]
    assert published == default_port  # host clients keep the default bootstrap 127.0.0.1:9092
    # Host clients: client.env as `kafka.sh up` writes it, read by stixbus.settings.
    host = _settings(_properties((compose_broker.secrets / "client.env").read_text()))
    assert host.security_protocol == "SASL_SSL"
    assert host.sasl_mechanism == "SCRAM-SHA-512"
    assert host.ssl_cafile == compose_broker.secrets / "ca.pem"
    assert host.credentials_file == compose_broker.secrets / "credentials.json"


def test_broker_certificate_is_valid_for_the_compose_host_name(
    compose_broker: ComposeBroker,
) -> None:
    context = ssl.create_default_context(cafile=str(compose_broker.secrets / "ca.pem"))
    for name in ("kafka", "127.0.0.1"):  # inside compose; on the Docker host
        with (
            socket.create_connection(("127.0.0.1", compose_broker.client_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.version()
    with (
        socket.create_connection(("127.0.0.1", compose_broker.client_port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="not-kafka")


@pytest.fixture(scope="module")
def compose_setup(compose_broker: ComposeBroker) -> ComposeBroker:
    """The broker after the setup service's stixbus steps, in order, with its environment
    (in-process: the same Typer app as the `stixbus` entry point, without paying its import
    three times)."""
    from typer.testing import CliRunner

    from stixbus.cli.main import cli
    from stixbus.settings import get_settings

    setup_env = compose_broker.env("setup")
    runner_env: dict[str, str | None] = {k: setup_env.get(k) for k in SETTINGS_ENV}
    runner_env |= {"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    for step in _shell_steps("setup"):
        if not step.startswith("stixbus "):
            continue
        get_settings.cache_clear()
        try:
            done = CliRunner().invoke(cli, shlex.split(step)[1:], env=runner_env)
        finally:
            get_settings.cache_clear()
        assert done.exit_code == 0, f"setup {step!r} failed:\n{done.output}\n{done.exception!r}"
    for service in ("worker", *EGRESS_SERVICES):  # the volumes setup chowns, present
        compose_broker.data_dir(service).mkdir(mode=0o700, exist_ok=True)
    return compose_broker


def test_setup_then_worker_admin_and_orgs_over_sasl_ssl(compose_setup: ComposeBroker) -> None:
    compose_broker = compose_setup
    users = read_credentials(compose_broker.secrets / "credentials.json")
    assert {ADMIN, WORKER} <= set(users)

    worker_env = compose_broker.env("worker")
    worker = _settings(worker_env)
    names = TopicNames(worker.topic_prefix)
    registry = load_registry(worker.registry_path)
    expected = {a.id for a in load_agreements(worker.agreements_path)}

    async def check() -> None:
        # The worker (its generated SCRAM password) reads the agreements setup published.
        conn = client_kwargs(worker, WORKER)
        assert conn["security_protocol"] == "SASL_SSL"
        keys = {
            (r.key or b"").decode()
            async for r in read_topic(conn, names.agreements, from_beginning=True, max_wait=10)
        }
        assert keys == expected
        # Admin on the HOST listener, as a client on the Docker host (client.env) would.
        client_env = _properties((compose_broker.secrets / "client.env").read_text())
        host = _settings(client_env).model_copy(
            update={"bootstrap_servers": f"127.0.0.1:{compose_broker.host_port}"}
        )
        topics = set(await list_topics(client_kwargs(host, ADMIN)))
        assert {spec.name for spec in names.all_specs(registry, worker.partitions)} <= topics
        # Deny by default: an org may not read the bus's internal topics.
        consumer = AIOKafkaConsumer(
            names.normalized, **client_kwargs(worker, "bank-a"), auto_offset_reset="earliest"
        )
        try:
            with pytest.raises(TopicAuthorizationFailedError):
                await consumer.start()
                await consumer.getmany(timeout_ms=5000)
        finally:
            await consumer.stop()

    asyncio.run(check())


HEALTHCHECK_JAVA = """
import java.io.FileInputStream;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;

public class HealthCheck {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) { props.load(in); }
        props.put("bootstrap.servers", args[1]);
        try (Admin admin = Admin.create(props)) {
            for (String name : admin.listTopics().names().get()) System.out.println(name);
        }
    }
}
"""


def test_healthcheck_admin_config_works_with_the_java_client(
    compose_broker: ComposeBroker, tmp_path: Path
) -> None:
    """The healthcheck's --command-config, used by Kafka's own Java admin client."""
    if shutil.which("javac") is None:
        pytest.fail("the Java source launcher needs a JDK (javac): install a JDK 17+")
    source = tmp_path / "HealthCheck.java"
    source.write_text(HEALTHCHECK_JAVA)
    config = compose_broker.secrets / "compose-admin.properties"
    listed = subprocess.run(
        [
            "java",
            f"-Dlog4j2.configurationFile={KAFKA_DIR}/log4j2-quiet.properties",
            "-cp",
            f"{LIB}/*",
            str(source),
            str(config),
            f"127.0.0.1:{compose_broker.client_port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]


def test_compose_format_arguments_carry_the_admin_credential_in_a_private_file(
    compose_broker: ComposeBroker,
) -> None:
    args = compose_broker.secrets / "compose-format.args"
    assert args.stat().st_mode & 0o777 == 0o600
    lines = args.read_text().splitlines()
    assert lines[:3] == ["kafka.tools.StorageTool", "format", "--ignore-formatted"]
    admin = _properties((compose_broker.secrets / "broker.secrets").read_text())["ADMIN_PASSWORD"]
    assert f'"SCRAM-SHA-512=[name=admin,password={admin}]"' in lines
    # and the broker formatted from it accepts admin over SASL_SSL (the setup test runs as admin)


def test_stixbus_services_run_the_image_without_installing_anything() -> None:
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    assert "pip install" not in text and "uv sync" not in text
    setup, worker = SERVICES["setup"], SERVICES["worker"]
    assert setup["image"] == worker["image"] and setup["build"] == "."
    assert all(not str(v).startswith(".:") for svc in (setup, worker) for v in svc["volumes"])
    # The worker: non-root (the image's uid unless told the secrets' owner), read-only root.
    assert worker["user"] == "${STIXBUS_UID:-10001}:${STIXBUS_GID:-10001}"
    assert worker["read_only"] is True and worker["tmpfs"] == ["/tmp"]
    assert worker["cap_drop"] == ["ALL"]
    home = worker["environment"]["STIXBUS_HOME"]
    assert f"worker-data:{home}" in worker["volumes"]
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "ENV PATH=/app/.venv/bin:$PATH" in dockerfile and "USER 10001:10001" in dockerfile


# -- the egress services, run with their compose environment -------------------------------------


def test_egress_principal_may_read_exactly_the_topics_the_services_follow(
    compose_setup: ComposeBroker,
) -> None:
    from egress.sinks.run import subscriber_orgs
    from egress.taxii.server import TaxiiApp

    taxii = _settings(compose_setup.env("taxii"))
    sinks = _settings(compose_setup.env("sinks"))
    registry = load_registry(taxii.registry_path)
    names = TopicNames(taxii.topic_prefix)
    granted = {
        b for b in derive_acls(registry, taxii.topic_prefix, taxii.app_id) if b.user == EGRESS
    }
    reads = {b.resource_name for b in granted}
    assert granted == {
        AclBinding(
            principal(EGRESS), ResourceType.TOPIC, PatternType.LITERAL, topic, Operation.READ
        )
        for topic in reads
    }, "stixbus-egress: READ on literal topics, nothing else (no group, no write)"
    app = TaxiiApp(taxii)  # connects as stixbus-egress (its password from credentials.json)
    try:
        assert app.follower.conn["sasl_plain_username"] == EGRESS
        assert set(app.follower.topics) == reads
    finally:
        app.credentials.close()
    assert {names.deliver(org) for org in subscriber_orgs(sinks)} == reads
    assert reads == {names.deliver(o.id) for o in registry.subscribers}


def _start(service: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    import sys

    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stixbus.cli.main", *SERVICES[service]["command"]],
            env=env,
            cwd=REPO_ROOT,  # the image's WORKDIR /app
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _healthy(service: str, env: dict[str, str]) -> bool:
    """The service's compose healthcheck, run here (`python` is this interpreter)."""
    import sys

    cmd, python, *args = SERVICES[service]["healthcheck"]["test"]
    assert (cmd, python) == ("CMD", "python")
    return subprocess.run([sys.executable, *args], env=env, capture_output=True).returncode == 0


def test_taxii_and_sinks_serve_with_their_compose_environment(
    compose_setup: ComposeBroker, tmp_path: Path
) -> None:
    """`stixbus taxii serve` and `stixbus sinks serve` with exactly the compose environment
    (paths and kafka:9092 mapped to this machine; free ports instead of 6444/6445/6453): TLS
    from compose-secrets' certificates, Kafka as stixbus-egress, the pull credentials that
    `stixbus taxii credentials add` writes into the secrets folder."""
    ports = {name: free_port() for name in ("taxii", "http", "dns")}
    taxii_env = compose_setup.env("taxii") | {"STIXBUS_TAXII_PORT": str(ports["taxii"])}
    sinks_env = compose_setup.env("sinks") | {
        "STIXBUS_SINKS_HTTP_PORT": str(ports["http"]),
        "STIXBUS_SINKS_DNS_PORT": str(ports["dns"]),
    }
    setup = _settings(compose_setup.env("setup"))
    assert setup.taxii.credentials_file is not None
    passwords = {
        org: add_credential(setup.taxii.credentials_file, org)[1] for org in ("bank-b", "isp-one")
    }
    names = TopicNames(setup.topic_prefix)
    ca = str(compose_setup.secrets / "ca.pem")
    ip = "198.51.100.77"
    obj = indicator(f"[ipv4-addr:value = '{ip}']")

    async def deliver() -> None:  # as the worker would (admin here: the worker has no console)
        producer = AIOKafkaProducer(**client_kwargs(setup, ADMIN))
        await producer.start()
        try:
            for org in passwords:
                await producer.send_and_wait(
                    names.deliver(org), orjson.dumps(obj), key=obj["id"].encode()
                )
        finally:
            await producer.stop()

    asyncio.run(deliver())
    taxii = _start("taxii", taxii_env, tmp_path / "taxii.log")
    sinks = _start("sinks", sinks_env, tmp_path / "sinks.log")
    try:
        objects_url = (
            f"https://127.0.0.1:{ports['taxii']}/taxii2/{setup.taxii.api_root}/collections/"
            f"{collection_id(setup.topic_prefix, 'bank-b')}/objects/"
        )
        list_url = f"https://localhost:{ports['http']}/lists/isp-one/ipv4.txt"
        served: dict[str, bool] = {}
        deadline = time.monotonic() + 40
        while len(served) < 2 and time.monotonic() < deadline:
            for name, proc in (("taxii", taxii), ("sinks", sinks)):
                log = (tmp_path / f"{name}.log").read_text(errors="replace")
                assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{log[-3000:]}"
            try:
                got = requests.get(
                    objects_url,
                    auth=("bank-b", passwords["bank-b"]),
                    headers={"Accept": TAXII_MEDIA},
                    verify=ca,
                    timeout=5,
                )
                if got.status_code == 200 and obj["id"] in got.text:
                    served["taxii"] = True
                listed = requests.get(
                    list_url, auth=("isp-one", passwords["isp-one"]), verify=ca, timeout=5
                )
                if listed.status_code == 200 and ip in listed.text:
                    served["sinks"] = True
            except requests.ConnectionError:
                pass  # not listening yet
            time.sleep(0.5)
        logs = {
            n: (tmp_path / f"{n}.log").read_text(errors="replace")[-2000:]
            for n in ("taxii", "sinks")
        }
        assert served == {"taxii": True, "sinks": True}, f"served {served}; logs {logs}"
        assert _healthy("taxii", taxii_env) and _healthy("sinks", sinks_env)
        # The certificates hold the compose service names (clients on the bus network) and
        # localhost / 127.0.0.1 (the Docker host), nothing else.
        context = ssl.create_default_context(cafile=ca)
        for port, good in ((ports["taxii"], "taxii"), (ports["http"], "sinks")):
            for name in (good, "localhost", "127.0.0.1"):
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                    context.wrap_socket(raw, server_hostname=name) as tls,
                ):
                    assert tls.version()
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                pytest.raises(ssl.SSLCertVerificationError),
            ):
                context.wrap_socket(raw, server_hostname="kafka")
        # The other org's credential does not open bank-b's collection.
        other = requests.get(
            objects_url, auth=("isp-one", passwords["isp-one"]), verify=ca, timeout=5
        )
        assert other.status_code in (403, 404)
    finally:
        _stop(taxii)
        _stop(sinks)
    # Kafka as stixbus-egress, and nothing written outside the services' own volumes.
    assert (compose_setup.data_dir("taxii") / "secrets" / "taxii-next.key").is_file()
    assert (compose_setup.data_dir("sinks") / "sinks" / "isp-one").is_dir()
