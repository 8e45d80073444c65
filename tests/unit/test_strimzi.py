"""`stixbus security k8s`: Strimzi KafkaTopic/KafkaUser resources and the worker Deployment.

Kubernetes does not run here.  What is checked: the committed deploy/k8s/stixbus.yaml is what
the generator prints for deploy/orgs.yaml; each resource validates against a JSON schema of the
fields the Strimzi CRDs document (kafka.strimzi.io/v1beta2 KafkaUser and KafkaTopic, from
strimzi-kafka-operator packaging/install/cluster-operator/04{3,4}-Crd-*.yaml, written out here
with unknown fields refused, which is stricter than the API server's pruning); the KafkaUser
ACLs are exactly `derive_acls` and their quotas exactly `settings_quotas` (the broker-side
equality is in tests/broker/test_security_broker.py); the Deployment runs non-root on a
read-only root filesystem with its state on a volume and only real settings in its environment.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml

from schemas.org import load_registry
from stixbus.app import WEB_PATHS
from stixbus.errors import ConfigError
from stixbus.kafka.acls import SERVICE_PRINCIPALS, derive_acls, users
from stixbus.kafka.quotas import settings_quotas
from stixbus.kafka.strimzi import (
    K8sTarget,
    acl_from_strimzi,
    kafka_users,
    manifests,
    quotas_from_strimzi,
    to_yaml,
    topic_specs,
)
from stixbus.kafka.topics import topic_configs
from stixbus.settings import Settings
from tests.helpers.paths import AGREEMENTS_YAML, ORGS_YAML, REPO_ROOT

COMMITTED = REPO_ROOT / "deploy" / "k8s" / "stixbus.yaml"
DEFAULTS = Settings(_env_prefix="STIXBUS_TEST_NOTHING_", _env_file=None)
REGISTRY = load_registry(ORGS_YAML)

_META = {
    "type": "object",
    "required": ["name", "namespace", "labels"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {
            "type": "object",
            "required": ["strimzi.io/cluster"],
            "additionalProperties": {"type": "string"},
        },
    },
    "additionalProperties": False,
}
OPERATIONS = [
    "Read", "Write", "Create", "Delete", "Alter", "Describe", "ClusterAction",
    "AlterConfigs", "DescribeConfigs", "IdempotentWrite", "All",
]  # fmt: skip
KAFKA_USER = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "kafka.strimzi.io/v1beta2"},
        "kind": {"const": "KafkaUser"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "userName": {"type": "string"},
                "authentication": {
                    "type": "object",
                    "required": ["type"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"enum": ["tls", "tls-external", "scram-sha-512"]},
                        "password": {"type": "object"},
                    },
                },
                "authorization": {
                    "type": "object",
                    "required": ["acls", "type"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"enum": ["simple"]},
                        "acls": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["resource", "operations"],
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"enum": ["allow", "deny"]},
                                    "host": {"type": "string"},
                                    "operations": {
                                        "type": "array",
                                        "minItems": 1,
                                        "items": {"enum": OPERATIONS},
                                    },
                                    "resource": {
                                        "type": "object",
                                        "required": ["type"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "name": {"type": "string"},
                                            "patternType": {"enum": ["literal", "prefix"]},
                                            "type": {
                                                "enum": [
                                                    "topic",
                                                    "group",
                                                    "cluster",
                                                    "transactionalId",
                                                ]
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
                "quotas": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "producerByteRate": {"type": "integer", "minimum": 0},
                        "consumerByteRate": {"type": "integer", "minimum": 0},
                        "requestPercentage": {"type": "integer", "minimum": 0},
                        "controllerMutationRate": {"type": "number", "minimum": 0},
                    },
                },
                "template": {"type": "object"},
            },
        },
    },
}
KAFKA_TOPIC = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "kafka.strimzi.io/v1beta2"},
        "kind": {"const": "KafkaTopic"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "partitions": {"type": "integer", "minimum": 1},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                "config": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "number", "boolean"]},
                },
                "topicName": {"type": "string"},
            },
        },
    },
}


def generate(target: K8sTarget | None = None) -> list[dict[str, Any]]:
    s = DEFAULTS
    specs = topic_specs(
        REGISTRY, s.topic_prefix, s.app_id, s.partitions, s.max_record_bytes,
        s.limits.message_bytes,
    )  # fmt: skip
    return manifests(
        REGISTRY, s.topic_prefix, s.app_id, settings_quotas(REGISTRY, s), specs,
        ORGS_YAML.read_text(),
        AGREEMENTS_YAML.read_text(), s.partitions, target or K8sTarget(),
    )  # fmt: skip


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_committed_manifests_are_the_generated_ones() -> None:
    committed = list(yaml.safe_load_all(COMMITTED.read_text()))
    assert committed == generate(), (
        "deploy/k8s/stixbus.yaml is stale: run "
        "`stixbus security k8s --registry deploy/orgs.yaml -o deploy/k8s/stixbus.yaml`"
    )
    # and the YAML round-trips (what kubectl reads is what the generator meant)
    assert list(yaml.safe_load_all(to_yaml(generate(), "x"))) == generate()


def test_strimzi_resources_validate_against_the_documented_crd_fields() -> None:
    docs = generate()
    for doc in of_kind(docs, "KafkaUser"):
        jsonschema.validate(doc, KAFKA_USER)
    for doc in of_kind(docs, "KafkaTopic"):
        jsonschema.validate(doc, KAFKA_TOPIC)
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "two resources with one name"


def test_the_schema_refuses_what_strimzi_would_not_understand() -> None:
    """The schemas above can fail: a misspelt field or a Kafka-style enum is refused."""
    user = of_kind(generate(), "KafkaUser")[0]
    acl = user["spec"]["authorization"]["acls"][0]
    for broken in (
        {**acl, "operation": acl["operations"]},  # not a field of the ACL rule
        {**acl, "operations": ["READ"]},  # Kafka's spelling, not Strimzi's
        {**acl, "resource": {**acl["resource"], "patternType": "PREFIXED"}},
    ):
        bad = {
            **user,
            "spec": {**user["spec"], "authorization": {"type": "simple", "acls": [broken]}},
        }
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, KAFKA_USER)
    quotas = of_kind(generate(), "KafkaUser")[-1]["spec"]["quotas"]
    for broken_quotas in (
        {**quotas, "producer_byte_rate": 1},  # Kafka's key, not Strimzi's field
        {**quotas, "requestPercentage": 12.5},  # the CRD takes integers
    ):
        bad = {**user, "spec": {**user["spec"], "quotas": broken_quotas}}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, KAFKA_USER)


def test_kafka_user_acls_are_exactly_the_derived_acls() -> None:
    docs = kafka_users(
        REGISTRY, "stixbus", "stixbus", settings_quotas(REGISTRY, DEFAULTS), K8sTarget()
    )
    assert [d["metadata"]["name"] for d in docs] == users(REGISTRY)
    generated = sorted(
        b
        for d in docs
        for acl in d["spec"]["authorization"]["acls"]
        for b in acl_from_strimzi(d["metadata"]["name"], acl)
    )
    assert generated == derive_acls(REGISTRY, "stixbus", "stixbus")


def test_kafka_user_quotas_are_exactly_the_derived_quotas() -> None:
    """Every org's KafkaUser carries its quotas (the CERT its registry override), the bus
    principals none; read back, they are `settings_quotas` value for value."""
    derived = settings_quotas(REGISTRY, DEFAULTS)
    users_docs = of_kind(generate(), "KafkaUser")
    generated = sorted(
        q for d in users_docs for q in quotas_from_strimzi(d["metadata"]["name"], d["spec"])
    )
    assert generated == derived
    by_name = {d["metadata"]["name"]: d["spec"] for d in users_docs}
    assert all("quotas" not in by_name[p] for p in SERVICE_PRINCIPALS)
    assert by_name["cert"]["quotas"]["producerByteRate"] == 32 * 1024 * 1024
    assert by_name["bank-a"]["quotas"] == {
        "consumerByteRate": DEFAULTS.quota.consumer_bytes_per_second,
        "producerByteRate": DEFAULTS.quota.producer_bytes_per_second,
        "requestPercentage": DEFAULTS.quota.request_percentage,
    }


def test_kafka_topics_are_what_stixbus_topics_creates() -> None:
    s, target = DEFAULTS, K8sTarget(replication=3, min_insync_replicas=2)
    specs = topic_specs(
        REGISTRY, s.topic_prefix, s.app_id, s.partitions, s.max_record_bytes,
        s.limits.message_bytes,
    )  # fmt: skip
    topics = {d["spec"]["topicName"]: d["spec"] for d in of_kind(generate(target), "KafkaTopic")}
    assert set(topics) == {spec.name for spec in specs}
    for spec in specs:
        assert topics[spec.name]["partitions"] == spec.partitions
        assert topics[spec.name]["replicas"] == 3
        assert topics[spec.name]["config"] == topic_configs(spec, 2)


def test_worker_deployment_is_non_root_read_only_with_state_on_a_volume() -> None:
    (deployment,) = of_kind(generate(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["runAsNonRoot"] is True
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsUser"] != 0
    assert deployment["spec"]["replicas"] >= 2  # a group of workers, standby replicas useful
    env = {e["name"]: e for e in container["env"]}
    fields = {f"STIXBUS_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, f"env vars stixbus does not read: {set(env) - fields}"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[env["STIXBUS_HOME"]["value"]] == "data"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["data"]
    for path_setting in ("STIXBUS_REGISTRY_PATH", "STIXBUS_AGREEMENTS_PATH", "STIXBUS_SSL_CAFILE"):
        path = env[path_setting]["value"]
        assert any(path.startswith(m + "/") for m in mounts), f"{path_setting} not on a volume"
    # Passwords only from Secrets, never literal values in the manifest.
    for secret in ("STIXBUS_SASL_PASSWORD", "STIXBUS_PSEUDONYM_KEY"):
        assert "value" not in env[secret] and env[secret]["valueFrom"]["secretKeyRef"]
    assert env["STIXBUS_SASL_USERNAME"]["value"] == "stixbus-worker"
    (config_map,) = of_kind(generate(), "ConfigMap")
    assert load_registry_text(config_map["data"]["orgs.yaml"]) == REGISTRY
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"]["path"] == path and path in WEB_PATHS
    (policy,) = of_kind(generate(), "NetworkPolicy")
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]


def load_registry_text(text: str) -> Any:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "orgs.yaml"
        path.write_text(text)
        return load_registry(path)


def test_invalid_kubernetes_names_are_refused_with_advice() -> None:
    with pytest.raises(ConfigError, match="not a valid Kubernetes resource name"):
        generate(K8sTarget(namespace="Not_Valid"))
    with pytest.raises(ConfigError, match=r"min\.insync\.replicas 3 is above the replication 2"):
        generate(K8sTarget(replication=2, min_insync_replicas=3))
