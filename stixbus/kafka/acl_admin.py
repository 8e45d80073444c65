"""Apply the registry's principals, ACLs and quotas to the broker (confluent-kafka AdminClient;
the quotas through stixbus.kafka.quota_admin, librdkafka has no client-quota call).

aiokafka's admin client has no ACL or SCRAM-user calls; librdkafka's has both.  Everything here
runs as the super user `admin` (its password comes from the credentials file or
STIXBUS_SASL_USERNAME/STIXBUS_SASL_PASSWORD).  The pure derivation lives in stixbus.kafka.acls.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AclBinding as CkAclBinding
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from confluent_kafka.admin import ResourceType as CkResourceType

from schemas.org import Registry
from stixbus.errors import StixbusError
from stixbus.kafka.acls import (
    ADMIN,
    AclBinding,
    AclPlan,
    Operation,
    PatternType,
    ResourceType,
    UserPlan,
    derive_acls,
    plan_acls,
    plan_users,
    users,
)
from stixbus.kafka.config import (
    CredentialsError,
    client_kwargs,
    confluent_config,
    read_credentials,
    uses_sasl,
    write_credentials,
)
from stixbus.kafka.quota_admin import alter_quotas, describe_quotas
from stixbus.kafka.quotas import Quota, QuotaPlan, plan_quotas, settings_quotas
from stixbus.settings import Settings

TIMEOUT = 30.0
SCRAM_ITERATIONS = 8192


class SecurityError(StixbusError, RuntimeError):
    """The broker refused or the setup cannot support the request; the message says why."""


@dataclass(frozen=True)
class ApplyResult:
    users: UserPlan
    acls: AclPlan
    quotas: QuotaPlan


def admin_client(settings: Settings) -> AdminClient:
    if not uses_sasl(settings):
        raise SecurityError(
            f"security protocol {settings.security_protocol}: the broker has no authentication "
            "or ACLs to manage; start it with STIXBUS_KAFKA_SECURITY=sasl_ssl (the default)"
        )
    return AdminClient({**confluent_config(settings, ADMIN), "socket.timeout.ms": 15000})


def _ck_fields(b: AclBinding) -> tuple[Any, ...]:
    return (
        CkResourceType[b.resource_type.value],
        b.resource_name,
        ResourcePatternType[b.pattern_type.value],
        b.principal,
        b.host,
        AclOperation[b.operation.value],
        AclPermissionType[b.permission],
    )


def _to_ck(b: AclBinding) -> CkAclBinding:
    return CkAclBinding(*_ck_fields(b))


def _to_filter(b: AclBinding) -> AclBindingFilter:
    """A filter matching exactly one binding (delete_acls takes filters)."""
    return AclBindingFilter(*_ck_fields(b))


def _enum_name(value: object) -> str:
    return str(getattr(value, "name", value))


def _from_ck(b: CkAclBinding) -> AclBinding | None:
    """None for bindings outside the model (DENY rules, other operations): kept as found."""
    try:
        return AclBinding(
            principal=b.principal,
            resource_type=ResourceType(_enum_name(b.restype)),
            pattern_type=PatternType(_enum_name(b.resource_pattern_type)),
            resource_name=b.name,
            operation=Operation(_enum_name(b.operation)),
            host=b.host,
            permission=_enum_name(b.permission_type),
        )
    except ValueError:
        return None


def _wait(future: Any, what: str) -> Any:
    try:
        return future.result(timeout=TIMEOUT)
    except KafkaException as exc:
        raise SecurityError(f"{what} failed: {exc.args[0]}") from exc


def existing_acls(client: AdminClient) -> list[AclBinding]:
    flt = AclBindingFilter(
        CkResourceType.ANY,
        None,  # type: ignore[arg-type]  # None matches any name (librdkafka)
        ResourcePatternType.ANY,
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    found = _wait(client.describe_acls(flt, request_timeout=TIMEOUT), "describe ACLs")
    return sorted(b for b in (_from_ck(x) for x in found) if b is not None)


def existing_users(client: AdminClient) -> set[str]:
    try:
        described = client.describe_user_scram_credentials(request_timeout=TIMEOUT)
        result = described.result(timeout=TIMEOUT)  # type: ignore[union-attr]
    except KafkaException as exc:
        raise SecurityError(f"describe SCRAM users failed: {exc.args[0]}") from exc
    return set(result)


def apply(
    settings: Settings, registry: Registry, *, rotate: bool = False, dry_run: bool = False
) -> ApplyResult:
    """Make the broker's SCRAM users, ACLs and user quotas match the registry (idempotent).

    New users get a random password, stored in the credentials file before the broker is told.
    Users, ACLs and quotas of orgs no longer in the registry are deleted.
    """
    if settings.credentials_file is None:
        raise CredentialsError(
            "`security apply` stores the passwords it generates in STIXBUS_CREDENTIALS_FILE, "
            "which is not set (the local stack sets it in <STIXBUS_HOME>/secrets/client.env)"
        )
    desired_acls = derive_acls(registry, settings.topic_prefix, settings.app_id)
    desired_quotas = settings_quotas(registry, settings)
    client = admin_client(settings)
    stored = read_credentials(settings.credentials_file)
    user_plan = plan_users(users(registry), existing_users(client), set(stored), rotate=rotate)
    acl_plan = plan_acls(desired_acls, existing_acls(client))
    admin_conn = client_kwargs(settings, ADMIN)
    quota_plan = plan_quotas(desired_quotas, describe_quotas(admin_conn))
    if dry_run:
        return ApplyResult(user_plan, acl_plan, quota_plan)

    mechanism = (
        ScramMechanism.SCRAM_SHA_256
        if settings.sasl_mechanism == "SCRAM-SHA-256"
        else ScramMechanism.SCRAM_SHA_512
    )
    new_passwords = {u: secrets.token_hex(24) for u in user_plan.upsert}
    if new_passwords:
        write_credentials(settings.credentials_file, {**stored, **new_passwords})
        info = ScramCredentialInfo(mechanism, SCRAM_ITERATIONS)
        alterations = [
            UserScramCredentialUpsertion(u, info, p.encode()) for u, p in new_passwords.items()
        ]
        for user, fut in client.alter_user_scram_credentials(
            alterations,  # type: ignore[arg-type]
            request_timeout=TIMEOUT,
        ).items():
            _wait(fut, f"create SCRAM user {user!r}")
    if acl_plan.delete:
        filters = [_to_filter(b) for b in acl_plan.delete]
        for _flt, fut in client.delete_acls(filters, request_timeout=TIMEOUT).items():
            _wait(fut, "delete ACLs")
    if acl_plan.create:
        for binding, fut in client.create_acls(
            [_to_ck(b) for b in acl_plan.create], request_timeout=TIMEOUT
        ).items():
            _wait(fut, f"create ACL {binding}")
    if not quota_plan.empty:
        alter_quotas(admin_conn, list(quota_plan.set), list(quota_plan.remove))
    if user_plan.delete:
        deletions = [UserScramCredentialDeletion(u, mechanism) for u in user_plan.delete]
        for user, fut in client.alter_user_scram_credentials(
            deletions,  # type: ignore[arg-type]
            request_timeout=TIMEOUT,
        ).items():
            _wait(fut, f"delete SCRAM user {user!r}")
        remaining = {u: p for u, p in read_credentials(settings.credentials_file).items()}
        for user in user_plan.delete:
            remaining.pop(user, None)
        write_credentials(settings.credentials_file, remaining)
    return ApplyResult(user_plan, acl_plan, quota_plan)


def show(settings: Settings) -> tuple[list[AclBinding], set[str]]:
    """The ACLs and SCRAM users the broker has now."""
    client = admin_client(settings)
    return existing_acls(client), existing_users(client)


def show_quotas(settings: Settings) -> list[Quota]:
    """The user quotas the broker enforces now."""
    admin_client(settings)  # the same "no security to manage" refusal on a plaintext broker
    return describe_quotas(client_kwargs(settings, ADMIN))
