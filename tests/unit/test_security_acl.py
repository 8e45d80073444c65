"""Principals and ACLs derived from the registry, and client security kwargs (no broker)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from schemas.org import Registry
from stixbus.kafka.acls import (
    ADMIN,
    EGRESS,
    OPERATOR,
    WORKER,
    AclBinding,
    Operation,
    PatternType,
    ResourceType,
    derive_acls,
    may_use_group,
    plan_acls,
    plan_users,
    principal,
    users,
)
from stixbus.kafka.config import (
    CredentialsError,
    client_kwargs,
    confluent_config,
    read_credentials,
    write_credentials,
)
from stixbus.kafka.topics import TopicNames
from stixbus.settings import Settings
from tests.helpers.paths import REPO_ROOT, example_registry

REGISTRY = example_registry()
PREFIX = "stixbus"
ACLS = derive_acls(REGISTRY, PREFIX, "stixbus")


def of(user: str, acls: list[AclBinding] = ACLS) -> list[AclBinding]:
    return [b for b in acls if b.principal == principal(user)]


def topic_ops(user: str) -> set[tuple[str, str, str]]:
    return {
        (b.pattern_type, b.resource_name, b.operation)
        for b in of(user)
        if b.resource_type == ResourceType.TOPIC
    }


def test_each_org_writes_only_its_ingest_and_reads_only_its_own_topics() -> None:
    for org in REGISTRY.orgs:
        expected: set[tuple[str, str, str]] = set()
        if org.publishes:
            expected |= {
                ("LITERAL", f"stixbus.ingest.{org.id}", "WRITE"),
                ("LITERAL", f"stixbus.receipts.{org.id}", "READ"),
            }
        if org.subscribes:
            expected.add(("LITERAL", f"stixbus.deliver.{org.id}", "READ"))
        assert topic_ops(org.id) == expected, org.id


def test_org_groups_are_their_own_and_do_not_cover_similar_names() -> None:
    groups = {(b.pattern_type, b.resource_name) for b in of("bank-a") if b.resource_type == "GROUP"}
    assert groups == {("LITERAL", "stixbus.bank-a"), ("PREFIXED", "stixbus.bank-a.")}
    assert may_use_group(PREFIX, "bank-a", "stixbus.bank-a")
    assert may_use_group(PREFIX, "bank-a", "stixbus.bank-a.siem")
    assert not may_use_group(PREFIX, "bank-a", "stixbus.bank-a-x")
    assert not may_use_group(PREFIX, "bank-a", "stixbus")


def test_no_org_gets_prefixed_topic_or_cluster_rights() -> None:
    for org in REGISTRY.orgs:
        for b in of(org.id):
            assert b.resource_type != ResourceType.CLUSTER
            if b.resource_type == ResourceType.TOPIC:
                assert b.pattern_type == PatternType.LITERAL
                assert b.resource_name.endswith(f".{org.id}")


def test_worker_reads_ingest_and_pipeline_but_no_delivery_topic() -> None:
    reads = {
        (b.pattern_type, b.resource_name)
        for b in of(WORKER)
        if b.resource_type == ResourceType.TOPIC and b.operation in (Operation.READ, Operation.ALL)
    }
    assert {("LITERAL", f"stixbus.ingest.{o.id}") for o in REGISTRY.publishers} <= reads
    assert ("LITERAL", "stixbus.normalized") in reads
    assert ("LITERAL", "stixbus.agreements") in reads
    assert ("LITERAL", "stixbus-stixbus-dedup-changelog") in reads  # table recovery
    assert not any("deliver" in name or "receipts" in name for _, name in reads)
    group_reads = [b for b in of(WORKER) if b.resource_type == "GROUP" and b.operation == "READ"]
    assert [(b.pattern_type, b.resource_name) for b in group_reads] == [("LITERAL", "stixbus")]


def test_worker_is_least_privileged() -> None:
    """Finding 8 of issue #12: no ingest or agreements write, no CREATE, nothing prefixed."""
    ops = topic_ops(WORKER)
    writes = {name for _, name, op in ops if op == Operation.WRITE}
    assert not any(".ingest." in name for name in writes)
    assert "stixbus.agreements" not in writes
    assert {f"stixbus.deliver.{o.id}" for o in REGISTRY.subscribers} <= writes
    assert {f"stixbus.receipts.{o.id}" for o in REGISTRY.publishers} <= writes
    assert {"stixbus.normalized", "stixbus.ticks", "stixbus.audit", "stixbus.deadletter"} <= writes
    assert {op for _, _, op in ops} == {Operation.READ, Operation.WRITE}
    assert all(pattern == PatternType.LITERAL for pattern, _, _ in ops)
    assert not any(b.resource_type == ResourceType.CLUSTER for b in of(WORKER))
    # Only the operator writes agreements.
    agreement_writers = {
        b.user for b in ACLS if b.resource_name == "stixbus.agreements" and b.operation == "WRITE"
    }
    assert agreement_writers == {OPERATOR}


def test_worker_table_changelogs_are_created_by_the_operator_with_its_topics() -> None:
    from stixbus.app import build_app
    from stixbus.context import BusContext
    from stixbus.kafka.topics import TopicNames

    settings = Settings(store="memory://", registry_path=REPO_ROOT / "deploy" / "orgs.yaml")
    app = build_app(BusContext.from_settings(settings))
    changelogs = {t.changelog_topic.get_topic_name() for t in app.tables.values()}
    specs = TopicNames("stixbus").all_specs(REGISTRY, 4, app_id=settings.app_id)
    assert changelogs <= {s.name for s in specs if s.compacted}
    worker_topics = {name for _, name, _ in topic_ops(WORKER) if not name.startswith("stixbus.")}
    assert changelogs == worker_topics
    assert app.conf.topic_allow_declare is False and app.conf.topic_disable_leader is True


def test_operator_reads_audit_and_deadletter_only() -> None:
    reads = {name for pattern, name, op in topic_ops(OPERATOR) if op == "READ"}
    assert reads == {"stixbus.audit", "stixbus.deadletter", "stixbus.agreements"}


def test_admin_gets_no_acl_and_every_principal_is_a_user() -> None:
    assert not of(ADMIN)
    assert {b.user for b in ACLS} == set(users(REGISTRY))
    assert sorted(set(ACLS)) == ACLS


def test_reserved_org_id_is_rejected_with_what_to_do() -> None:
    data = REGISTRY.model_dump(mode="json")
    data["orgs"][0]["id"] = "stixbus-worker"
    with pytest.raises(ValueError, match=r"reserved.*rename the org"):
        derive_acls(Registry.model_validate(data), PREFIX, "stixbus")


def test_app_id_inside_topic_prefix_is_rejected() -> None:
    with pytest.raises(ValueError, match="app id"):
        derive_acls(REGISTRY, PREFIX, "stixbus.worker")


def registry_without(org_id: str) -> Registry:
    data = REGISTRY.model_dump(mode="json")
    data["orgs"] = [o for o in data["orgs"] if o["id"] != org_id]
    return Registry.model_validate(data)


def test_plan_removes_exactly_a_removed_orgs_acls_and_keeps_admin_ones() -> None:
    admin_acl = AclBinding(
        principal(ADMIN), ResourceType.TOPIC, PatternType.LITERAL, "x", Operation.READ
    )
    plan = plan_acls(derive_acls(registry_without("bank-c"), PREFIX, "stixbus"), [*ACLS, admin_acl])
    assert not plan.create
    # The org's own bindings, and the worker's and the pull servers' literal rights on that
    # org's topics.
    worker_on_c = {b for b in of(WORKER) if b.resource_name.endswith(".bank-c")}
    egress_on_c = {b for b in of(EGRESS) if b.resource_name.endswith(".bank-c")}
    assert worker_on_c and egress_on_c
    assert set(plan.delete) == set(of("bank-c")) | worker_on_c | egress_on_c
    assert plan_acls(ACLS, ACLS).empty


def test_plan_users() -> None:
    desired = users(registry_without("bank-c"))
    plan = plan_users(desired, {ADMIN, "bank-c", "bank-a"}, {"bank-a"})
    assert "bank-a" not in plan.upsert and "bank-b" in plan.upsert
    assert plan.delete == ("bank-c",)
    assert set(plan_users(desired, set(desired), set(desired), rotate=True).upsert) == set(desired)


# -- client kwargs ------------------------------------------------------------------------------


def secure(tmp_path: Path, **kw: object) -> Settings:
    ca = tmp_path / "ca.pem"
    ca.write_text((REPO_ROOT / "tests" / "data" / "test-ca.pem").read_text())
    creds = tmp_path / "credentials.json"
    write_credentials(creds, {"bank-a": "pw-a", ADMIN: "pw-admin"})
    values: dict[str, object] = {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": ca,
        "credentials_file": creds,
        **kw,
    }
    return Settings(**values)  # type: ignore[arg-type]


def test_plaintext_kwargs_are_just_bootstrap() -> None:
    settings = Settings(bootstrap_servers="127.0.0.1:1", security_protocol="PLAINTEXT")
    assert client_kwargs(settings, "bank-a") == {"bootstrap_servers": "127.0.0.1:1"}


def test_sasl_ssl_kwargs_take_the_principals_password_from_the_file(tmp_path: Path) -> None:
    kwargs = client_kwargs(secure(tmp_path), "bank-a")
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("bank-a", "pw-a")
    assert kwargs["ssl_context"].check_hostname
    conf = confluent_config(secure(tmp_path), ADMIN)
    assert conf["sasl.password"] == "pw-admin" and conf["ssl.ca.location"].endswith("ca.pem")


def test_env_username_and_password_win(tmp_path: Path) -> None:
    settings = secure(tmp_path, sasl_username="bank-b", sasl_password=SecretStr("pw-b"))
    kwargs = client_kwargs(settings, "bank-a")
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("bank-b", "pw-b")


def test_missing_password_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match=r"'bank-z'.*security apply"):
        client_kwargs(secure(tmp_path), "bank-z")
    settings = Settings(security_protocol="SASL_SSL", credentials_file=None)
    with pytest.raises(CredentialsError, match="STIXBUS_SASL_USERNAME"):
        client_kwargs(settings, "bank-a")


def test_missing_ca_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match=r"nope\.pem"):
        client_kwargs(secure(tmp_path, ssl_cafile=tmp_path / "nope.pem"), "bank-a")


def test_credentials_file_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "credentials.json"
    write_credentials(path, {"b": "2", "a": "1"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_credentials(path) == {"a": "1", "b": "2"}
    path.write_text("[]")
    with pytest.raises(CredentialsError, match="must be"):
        read_credentials(path)


def test_feedback_topics_are_the_workers_alone() -> None:
    """Members' reports name who saw what: no org (nor the operator) may read the feedback
    topics, the worker reads and writes them (and reads the audit it indexes)."""
    feedback = {
        "stixbus.feedback", "stixbus.feedback-sources", "stixbus.false-positives",
        "stixbus-stixbus-feedback-changelog", "stixbus-stixbus-feedback-sources-changelog",
    }  # fmt: skip
    worker = topic_ops(WORKER)
    assert {(n, Operation.READ) for n in feedback} <= {(n, op) for _, n, op in worker}
    assert {(n, Operation.WRITE) for n in feedback} <= {(n, op) for _, n, op in worker}
    assert ("stixbus.audit", Operation.READ) in {(n, op) for _, n, op in worker}
    for binding in ACLS:
        if binding.user != WORKER and binding.resource_type == ResourceType.TOPIC:
            assert binding.resource_name not in feedback, binding.describe()
            assert binding.pattern_type == PatternType.LITERAL or not any(
                name.startswith(binding.resource_name) for name in feedback
            ) or binding.operation == Operation.DESCRIBE, binding.describe()
    specs = {s.name: s for s in TopicNames("stixbus").all_specs(REGISTRY, 4, app_id="stixbus")}
    assert feedback <= set(specs) and specs["stixbus.false-positives"].compacted


def test_egress_reads_every_delivery_topic_and_nothing_else() -> None:
    """The pull servers' principal: READ on each subscriber's deliver topic, no write, no
    group, no other topic (what an attacker holding its password could reach)."""
    bindings = of(EGRESS)
    delivers = {TopicNames(PREFIX).deliver(o.id) for o in REGISTRY.subscribers}
    assert {b.resource_name for b in bindings} == delivers
    assert {(b.resource_type, b.pattern_type, b.operation) for b in bindings} == {
        (ResourceType.TOPIC, PatternType.LITERAL, Operation.READ)
    }
