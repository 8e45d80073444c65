"""Kubernetes resources for the Strimzi operator, derived from the org registry (pure: no I/O).

`stixbus security k8s` prints them (docs/operations.md, "Deploy").  What a local broker gets
from `stixbus topics` and `stixbus security apply`, a Strimzi cluster gets from these:

- one `KafkaTopic` per topic of `TopicNames.all_specs` (same partitions, cleanup policy, record
  limit and min.insync.replicas as `stixbus topics` creates);
- one `KafkaUser` per principal of `acls.users` (SCRAM-SHA-512; Strimzi's user operator makes the
  password Secret), whose ACLs are exactly `acls.derive_acls` for that principal and whose
  `spec.quotas` are exactly its `quotas.derive_quotas` values (none for the bus principals);
- the worker: a ConfigMap with the registry and agreements, a Deployment (non-root,
  read-only root filesystem, state on an emptyDir at STIXBUS_HOME) and a NetworkPolicy that
  lets only Prometheus reach its web port.

There is no `admin` super user on Strimzi: the user operator owns every ACL, and the operator
principal publishes agreements.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from schemas.org import Registry
from stixbus.errors import ConfigError
from stixbus.kafka.acls import (
    WORKER,
    AclBinding,
    Operation,
    PatternType,
    ResourceType,
    derive_acls,
    principal,
    users,
)
from stixbus.kafka.quotas import (
    CONSUMER_BYTE_RATE,
    PRODUCER_BYTE_RATE,
    REQUEST_PERCENTAGE,
    Quota,
)
from stixbus.kafka.topics import TopicNames, TopicSpec, topic_configs

API_VERSION = "kafka.strimzi.io/v1beta2"
CLUSTER_LABEL = "strimzi.io/cluster"
APP_LABEL = "app.kubernetes.io/name"
# A DNS-1123 subdomain: what Kubernetes accepts as metadata.name (253 characters at most).
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

_RESOURCE = {
    ResourceType.TOPIC: "topic",
    ResourceType.GROUP: "group",
    ResourceType.CLUSTER: "cluster",
}
_PATTERN = {PatternType.LITERAL: "literal", PatternType.PREFIXED: "prefix"}
_OPERATION = {
    Operation.ALL: "All",
    Operation.READ: "Read",
    Operation.WRITE: "Write",
    Operation.CREATE: "Create",
    Operation.DESCRIBE: "Describe",
    Operation.DESCRIBE_CONFIGS: "DescribeConfigs",
}


@dataclass(frozen=True)
class K8sTarget:
    """Where and how the bus runs on Kubernetes (`stixbus security k8s` options)."""

    cluster: str = "stixbus"  # the Strimzi `Kafka` resource's name
    namespace: str = "stixbus"
    image: str = "stixbus:latest"
    workers: int = 2
    replication: int = 3
    min_insync_replicas: int = 2
    standby_replicas: int = 1

    @property
    def bootstrap(self) -> str:
        """Strimzi's TLS listener service (a `tls: true` internal listener on port 9093)."""
        return f"{self.cluster}-kafka-bootstrap.{self.namespace}.svc:9093"

    @property
    def ca_secret(self) -> str:
        return f"{self.cluster}-cluster-ca-cert"


def k8s_name(name: str, what: str) -> str:
    if len(name) > 253 or not _SUBDOMAIN.match(name):
        raise ConfigError(
            f"{what} {name!r} is not a valid Kubernetes resource name (lower-case letters, "
            "digits, '-' and '.', at most 253 characters): rename it in the registry or settings"
        )
    return name


def strimzi_acl(binding: AclBinding) -> dict[str, Any]:
    """One ACL binding as a KafkaUser `spec.authorization.acls` entry."""
    resource: dict[str, Any] = {"type": _RESOURCE[binding.resource_type]}
    if binding.resource_type is not ResourceType.CLUSTER:
        resource["name"] = binding.resource_name
        resource["patternType"] = _PATTERN[binding.pattern_type]
    return {
        "resource": resource,
        "operations": [_OPERATION[binding.operation]],
        "host": binding.host,
        "type": binding.permission.lower(),
    }


def acl_from_strimzi(user: str, acl: dict[str, Any]) -> list[AclBinding]:
    """The inverse of `strimzi_acl`: what the user operator asks the broker for."""
    resource = acl["resource"]
    rtype = next(k for k, v in _RESOURCE.items() if v == resource["type"])
    pattern = next(k for k, v in _PATTERN.items() if v == resource.get("patternType", "literal"))
    name = "kafka-cluster" if rtype is ResourceType.CLUSTER else resource["name"]
    return [
        AclBinding(
            principal(user),
            rtype,
            pattern,
            name,
            next(k for k, v in _OPERATION.items() if v == op),
            acl.get("host", "*"),
            acl.get("type", "allow").upper(),
        )
        for op in acl["operations"]
    ]


# KafkaUser `spec.quotas` field of each Kafka quota key (integers in the CRD).
_QUOTA_FIELD = {
    PRODUCER_BYTE_RATE: "producerByteRate",
    CONSUMER_BYTE_RATE: "consumerByteRate",
    REQUEST_PERCENTAGE: "requestPercentage",
}


def strimzi_quotas(quotas: list[Quota]) -> dict[str, int]:
    """One principal's quotas as a KafkaUser `spec.quotas` object."""
    return {_QUOTA_FIELD[q.key]: int(q.value) for q in quotas}


def quotas_from_strimzi(user: str, spec: dict[str, Any]) -> list[Quota]:
    """The inverse of `strimzi_quotas`: what the user operator sets on the broker."""
    keys = {v: k for k, v in _QUOTA_FIELD.items()}
    return sorted(Quota(user, keys[f], float(v)) for f, v in spec.get("quotas", {}).items())


def kafka_users(
    registry: Registry, prefix: str, app_id: str, quotas: list[Quota], target: K8sTarget
) -> list[dict[str, Any]]:
    """A KafkaUser per bus principal, with that principal's ACLs from `derive_acls` and its
    quotas from `quotas` (`quotas.settings_quotas`)."""
    bindings = derive_acls(registry, prefix, app_id)
    out = []
    for user in users(registry):
        own = [b for b in bindings if b.user == user]
        spec: dict[str, Any] = {
            "authentication": {"type": "scram-sha-512"},
            "authorization": {"type": "simple", "acls": [strimzi_acl(b) for b in own]},
        }
        own_quotas = [q for q in quotas if q.user == user]
        if own_quotas:
            spec["quotas"] = strimzi_quotas(own_quotas)
        out.append(
            {
                "apiVersion": API_VERSION,
                "kind": "KafkaUser",
                "metadata": {
                    "name": k8s_name(user, "principal"),
                    "namespace": target.namespace,
                    "labels": {CLUSTER_LABEL: target.cluster},
                },
                "spec": spec,
            }
        )
    return out


def kafka_topic(spec: TopicSpec, target: K8sTarget) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "KafkaTopic",
        "metadata": {
            "name": k8s_name(spec.name, "topic"),
            "namespace": target.namespace,
            "labels": {CLUSTER_LABEL: target.cluster},
        },
        "spec": {
            "topicName": spec.name,
            "partitions": spec.partitions,
            "replicas": target.replication,
            "config": topic_configs(spec, target.min_insync_replicas),
        },
    }


def kafka_topics(specs: list[TopicSpec], target: K8sTarget) -> list[dict[str, Any]]:
    return [kafka_topic(s, target) for s in specs]


def worker_resources(
    prefix: str,
    app_id: str,
    partitions: int,
    registry_yaml: str,
    agreements_yaml: str,
    target: K8sTarget,
) -> list[dict[str, Any]]:
    """ConfigMap (registry, agreements), worker Deployment and its NetworkPolicy."""
    labels = {APP_LABEL: "stixbus-worker"}
    config = "stixbus-config"
    env = {
        "STIXBUS_BOOTSTRAP_SERVERS": target.bootstrap,
        "STIXBUS_SECURITY_PROTOCOL": "SASL_SSL",
        "STIXBUS_SASL_MECHANISM": "SCRAM-SHA-512",
        "STIXBUS_SASL_USERNAME": WORKER,
        "STIXBUS_SSL_CAFILE": "/etc/stixbus/ca/ca.crt",
        "STIXBUS_TOPIC_PREFIX": prefix,
        "STIXBUS_APP_ID": app_id,
        "STIXBUS_PARTITIONS": str(partitions),
        "STIXBUS_REPLICATION_FACTOR": str(target.replication),
        "STIXBUS_MIN_INSYNC_REPLICAS": str(target.min_insync_replicas),
        "STIXBUS_TABLE_STANDBY_REPLICAS": str(target.standby_replicas),
        "STIXBUS_HOME": "/data",
        "STIXBUS_STORE": "rocksdb://",
        "STIXBUS_REGISTRY_PATH": "/etc/stixbus/config/orgs.yaml",
        "STIXBUS_AGREEMENTS_PATH": "/etc/stixbus/config/agreements.yaml",
        "STIXBUS_WEB_HOST": "0.0.0.0",  # the pod's own address; the NetworkPolicy limits who
        "STIXBUS_WEB_PORT": "6066",
    }
    env_list: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env.items()]
    env_list += [
        # Strimzi's user operator writes the generated SCRAM password into a Secret named after
        # the KafkaUser; every worker must share one pseudonym key (create it once, see docs).
        _secret_env("STIXBUS_SASL_PASSWORD", WORKER, "password"),
        _secret_env("STIXBUS_PSEUDONYM_KEY", "stixbus-pseudonym", "key"),
    ]
    probe = {"httpGet": {"port": "web"}, "periodSeconds": 10, "timeoutSeconds": 2}
    container = {
        "name": "worker",
        "image": target.image,
        "args": ["worker"],
        "env": env_list,
        "ports": [{"name": "web", "containerPort": 6066}],
        "livenessProbe": {**probe, "httpGet": {"path": "/healthz", "port": "web"}},
        "readinessProbe": {**probe, "httpGet": {"path": "/readyz", "port": "web"}},
        "resources": {
            "requests": {"cpu": "500m", "memory": "512Mi"},
            "limits": {"memory": "2Gi"},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "config", "mountPath": "/etc/stixbus/config", "readOnly": True},
            {"name": "ca", "mountPath": "/etc/stixbus/ca", "readOnly": True},
        ],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "stixbus-worker", "namespace": target.namespace, "labels": labels},
        "spec": {
            "replicas": target.workers,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
                    "terminationGracePeriodSeconds": 40,
                    "containers": [container],
                    "volumes": [
                        {"name": "data", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                        {"name": "config", "configMap": {"name": config}},
                        {"name": "ca", "secret": {"secretName": target.ca_secret}},
                    ],
                },
            },
        },
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config, "namespace": target.namespace, "labels": labels},
        "data": {"orgs.yaml": registry_yaml, "agreements.yaml": agreements_yaml},
    }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "stixbus-worker-web", "namespace": target.namespace},
        "spec": {
            "podSelector": {"matchLabels": labels},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {APP_LABEL: "prometheus"}}}],
                    "ports": [{"port": 6066, "protocol": "TCP"}],
                }
            ],
        },
    }
    return [config_map, deployment, policy]


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def manifests(
    registry: Registry,
    prefix: str,
    app_id: str,
    quotas: list[Quota],
    specs: list[TopicSpec],
    registry_yaml: str,
    agreements_yaml: str,
    partitions: int,
    target: K8sTarget,
) -> list[dict[str, Any]]:
    """Every resource, in apply order: topics, users, then the worker."""
    if target.min_insync_replicas > target.replication:
        raise ConfigError(
            f"min.insync.replicas {target.min_insync_replicas} is above the replication "
            f"{target.replication}: no write could succeed; lower --min-insync-replicas"
        )
    k8s_name(target.namespace, "namespace")
    return [
        *kafka_topics(specs, target),
        *kafka_users(registry, prefix, app_id, quotas, target),
        *worker_resources(prefix, app_id, partitions, registry_yaml, agreements_yaml, target),
    ]


def topic_specs(
    registry: Registry,
    prefix: str,
    app_id: str,
    partitions: int,
    max_record_bytes: int,
    ingest_message_bytes: int,
) -> list[TopicSpec]:
    return TopicNames(prefix).all_specs(
        registry, partitions, max_record_bytes, ingest_message_bytes, app_id=app_id
    )


def to_yaml(docs: list[dict[str, Any]], source: str) -> str:
    """The multi-document YAML `stixbus security k8s` prints."""
    import yaml

    header = (
        f"# Generated by `stixbus security k8s` from {source}; regenerate, do not edit "
        "(docs/operations.md, Deploy).\n"
    )
    return header + yaml.safe_dump_all(docs, sort_keys=False, width=100)
