"""Kafka principals and ACL bindings derived from the org registry (pure: no broker, no I/O).

One SCRAM principal per org (its org id), one for the bus worker and one for operators; `admin`
is the broker's super user (created when the storage is formatted) and gets no ACLs.  The ACLs
(docs/security.md has the reasoning):

- org X (publisher) may WRITE `<prefix>.ingest.X` and READ `<prefix>.receipts.X`;
- org X (subscriber) may READ `<prefix>.deliver.X`;
- org X may use the consumer group `<prefix>.X` and groups whose names start with `<prefix>.X.`;
- the worker may READ each publisher's ingest topic, claims, normalized, ticks, markings,
  agreements, audit, the feedback topics and its table changelogs
  (`<app_id>-<table>-changelog`), WRITE claims, markings, normalized, ticks, audit, dead letters,
  the feedback topics (feedback, feedback-sources, false-positives: no org reads them),
  each org's receipts/deliver topic and its changelogs, use the consumer group `<app_id>` and
  DESCRIBE every `<prefix>.` group (committed offsets, for the lag monitor); it never writes an
  ingest topic or agreements and creates nothing (every right is literal);
- the pull servers (`stixbus-egress`: the TAXII server, the sink lists) may READ each
  subscriber's `<prefix>.deliver.X` and nothing else; they follow those topics without a
  consumer group and write nothing;
- operators may READ audit, dead letters and agreements, WRITE agreements and DESCRIBE every
  `<prefix>.` topic and group, with groups under `<prefix>.stixbus-operator.`.

READ and WRITE imply DESCRIBE in Kafka, and WRITE on any topic implies IDEMPOTENT_WRITE (KIP-679),
so those are not listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from schemas.org import Registry
from stixbus.errors import ConfigError
from stixbus.kafka.topics import WORKER_TABLES, TopicNames, changelog_topic

ADMIN = "admin"
WORKER = "stixbus-worker"
OPERATOR = "stixbus-operator"
EGRESS = "stixbus-egress"
SERVICE_PRINCIPALS = (WORKER, OPERATOR, EGRESS)
RESERVED_NAMES = frozenset({ADMIN, WORKER, OPERATOR, EGRESS})


class ResourceType(StrEnum):
    TOPIC = "TOPIC"
    GROUP = "GROUP"
    CLUSTER = "CLUSTER"


class PatternType(StrEnum):
    LITERAL = "LITERAL"
    PREFIXED = "PREFIXED"


class Operation(StrEnum):
    ALL = "ALL"
    READ = "READ"
    WRITE = "WRITE"
    CREATE = "CREATE"
    DESCRIBE = "DESCRIBE"
    DESCRIBE_CONFIGS = "DESCRIBE_CONFIGS"


@dataclass(frozen=True, order=True)
class AclBinding:
    """One ALLOW rule: `principal` may do `operation` on the resource from any host."""

    principal: str
    resource_type: ResourceType
    pattern_type: PatternType
    resource_name: str
    operation: Operation
    host: str = "*"
    permission: str = "ALLOW"

    @property
    def user(self) -> str:
        return self.principal.removeprefix("User:")

    def describe(self) -> str:
        pattern = "prefix " if self.pattern_type == PatternType.PREFIXED else ""
        return (
            f"{self.principal} {self.permission} {self.operation} on "
            f"{self.resource_type.lower()} {pattern}{self.resource_name!r}"
        )


def principal(user: str) -> str:
    return f"User:{user}"


def group_prefix(prefix: str, user: str) -> str:
    """Consumer groups `user` may use: `<prefix>.<user>` itself (the lag monitor's convention,
    stixbus/kafka/lag.py) and `<prefix>.<user>.` followed by anything."""
    return f"{prefix}.{user}."


def may_use_group(prefix: str, user: str, group: str) -> bool:
    own = group_prefix(prefix, user)
    return group == own[:-1] or group.startswith(own)


def users(registry: Registry) -> list[str]:
    """Every SCRAM user the registry implies (admin excluded: it exists from format time)."""
    check_registry(registry)
    return [WORKER, OPERATOR, EGRESS, *(o.id for o in registry.orgs)]


def check_registry(registry: Registry) -> None:
    for org in registry.orgs:
        if org.id in RESERVED_NAMES:
            raise ConfigError(
                f"org id {org.id!r} is reserved for a bus principal "
                f"({', '.join(sorted(RESERVED_NAMES))}): rename the org in the registry"
            )


def _topic(user: str, pattern: PatternType, name: str, *ops: Operation) -> list[AclBinding]:
    return [AclBinding(principal(user), ResourceType.TOPIC, pattern, name, op) for op in ops]


def _group(
    user: str, pattern: PatternType, name: str, op: Operation = Operation.READ
) -> AclBinding:
    return AclBinding(principal(user), ResourceType.GROUP, pattern, name, op)


def org_bindings(registry: Registry, prefix: str) -> list[AclBinding]:
    names = TopicNames(prefix)
    lit = PatternType.LITERAL
    out: list[AclBinding] = []
    for org in registry.orgs:
        if org.publishes:
            out += _topic(org.id, lit, names.ingest(org.id), Operation.WRITE)
            out += _topic(org.id, lit, names.receipts(org.id), Operation.READ)
        if org.subscribes:
            out += _topic(org.id, lit, names.deliver(org.id), Operation.READ)
        out.append(_group(org.id, lit, group_prefix(prefix, org.id)[:-1]))
        out.append(_group(org.id, PatternType.PREFIXED, group_prefix(prefix, org.id)))
    return out


def worker_reads(registry: Registry, prefix: str, app_id: str) -> list[str]:
    """Topics the worker consumes: each publisher's ingest topic, its pipeline inputs
    (normalized, ticks, agreements) and its table changelogs (recovery)."""
    names = TopicNames(prefix)
    return sorted(
        {
            *(names.ingest(o.id) for o in registry.publishers),
            names.claims,
            names.normalized,
            names.ticks,
            names.agreements,
            names.markings,
            *_feedback_topics(names),
            *(changelog_topic(app_id, t) for t in WORKER_TABLES),
        }
    )


def _feedback_topics(names: TopicNames) -> tuple[str, ...]:
    """The feedback stages' topics: the worker reads (audit too) and writes them, no org does."""
    return (names.audit, names.feedback, names.feedback_sources, names.false_positives)


def worker_writes(registry: Registry, prefix: str, app_id: str) -> list[str]:
    """Topics the worker produces to: the stage outputs, never an ingest topic or agreements."""
    names = TopicNames(prefix)
    return sorted(
        {
            names.claims,
            names.markings,
            names.normalized,
            names.ticks,
            names.audit,
            names.deadletter,
            *_feedback_topics(names),
            *(names.receipts(o.id) for o in registry.publishers),
            *(names.deliver(o.id) for o in registry.subscribers),
            *(changelog_topic(app_id, t) for t in WORKER_TABLES),
        }
    )


def worker_bindings(registry: Registry, prefix: str, app_id: str) -> list[AclBinding]:
    """Least privilege: literal READ on what it consumes, literal WRITE on what it produces.
    No CREATE anywhere (the operator's `stixbus topics` creates every topic, Faust changelogs
    included; the app runs with topic_allow_declare off) and no cluster rights."""
    lit, pre = PatternType.LITERAL, PatternType.PREFIXED
    out: list[AclBinding] = []
    for topic in worker_reads(registry, prefix, app_id):
        out += _topic(WORKER, lit, topic, Operation.READ)
    for topic in worker_writes(registry, prefix, app_id):
        out += _topic(WORKER, lit, topic, Operation.WRITE)
    out.append(_group(WORKER, lit, app_id))
    # Committed offsets of subscriber groups, for the lag monitor (agents/observe.py).
    out.append(_group(WORKER, pre, f"{prefix}.", Operation.DESCRIBE))
    return out


def egress_bindings(registry: Registry, prefix: str) -> list[AclBinding]:
    """The pull servers read every delivery topic (group-less: no group rights), write none."""
    names = TopicNames(prefix)
    out: list[AclBinding] = []
    for org in registry.subscribers:
        out += _topic(EGRESS, PatternType.LITERAL, names.deliver(org.id), Operation.READ)
    return out


def operator_bindings(prefix: str) -> list[AclBinding]:
    names = TopicNames(prefix)
    lit = PatternType.LITERAL
    out = _topic(OPERATOR, PatternType.PREFIXED, f"{prefix}.", Operation.DESCRIBE)
    out += _topic(OPERATOR, lit, names.audit, Operation.READ)
    out += _topic(OPERATOR, lit, names.deadletter, Operation.READ)
    out += _topic(OPERATOR, lit, names.agreements, Operation.READ, Operation.WRITE)
    out.append(_group(OPERATOR, PatternType.PREFIXED, group_prefix(prefix, OPERATOR)))
    out.append(_group(OPERATOR, PatternType.PREFIXED, f"{prefix}.", Operation.DESCRIBE))
    return out


def derive_acls(registry: Registry, prefix: str, app_id: str) -> list[AclBinding]:
    """Every ACL binding the bus needs, sorted and without duplicates."""
    check_registry(registry)
    if app_id.startswith(f"{prefix}."):
        raise ConfigError(
            f"app id {app_id!r} starts with the topic prefix {prefix!r} plus a dot, so the "
            "worker's internal topics would mix with the org topics: choose an app id without "
            "that prefix"
        )
    bindings = org_bindings(registry, prefix)
    bindings += worker_bindings(registry, prefix, app_id)
    bindings += operator_bindings(prefix)
    bindings += egress_bindings(registry, prefix)
    return sorted(set(bindings))


@dataclass(frozen=True)
class AclPlan:
    """What `stixbus security apply` changes: bindings to create and to delete."""

    create: tuple[AclBinding, ...]
    delete: tuple[AclBinding, ...]

    @property
    def empty(self) -> bool:
        return not self.create and not self.delete


def plan_acls(desired: list[AclBinding], existing: list[AclBinding]) -> AclPlan:
    """Reconcile: the bus owns every ACL on its cluster, so anything not desired goes.

    ACLs of the super user are kept (it needs none, but an operator may have added some).
    """
    want, have = set(desired), set(existing)
    delete = {b for b in have - want if b.user != ADMIN}
    return AclPlan(create=tuple(sorted(want - have)), delete=tuple(sorted(delete)))


@dataclass(frozen=True)
class UserPlan:
    """SCRAM users to create (or re-key) and to delete."""

    upsert: tuple[str, ...]
    delete: tuple[str, ...]


def plan_users(
    desired: list[str], on_broker: set[str], with_password: set[str], rotate: bool = False
) -> UserPlan:
    """A user is (re)keyed when missing on the broker, when its password is not in the
    credentials file, or on rotation; users on the broker but not desired are deleted (never
    admin)."""
    upsert = [u for u in desired if rotate or u not in on_broker or u not in with_password]
    delete = sorted(u for u in on_broker - set(desired) if u != ADMIN)
    return UserPlan(upsert=tuple(upsert), delete=tuple(delete))
