"""`stixbus security apply|show|plan`: SCRAM users, Kafka ACLs and user quotas derived from the org
registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from schemas.org import load_registry
from stixbus.kafka.acls import AclBinding, derive_acls, users
from stixbus.kafka.quotas import Quota, settings_quotas
from stixbus.settings import Settings, get_settings

app = typer.Typer(
    no_args_is_help=True,
    help="Kafka principals, ACLs and quotas from the org registry (docs/security.md).",
)
out = Console()

RegistryOpt = Annotated[
    Path | None,
    typer.Option("--registry", help="Org registry YAML (default: STIXBUS_REGISTRY_PATH)"),
]


def _settings(registry: Path | None) -> Settings:
    settings = get_settings()
    if registry is not None:
        settings = settings.model_copy(update={"registry_path": registry})
    return settings


def _table(title: str, bindings: list[AclBinding], marks: dict[AclBinding, str]) -> Table:
    table = Table(title=title)
    for column in ("principal", "resource", "pattern", "name", "operation"):
        table.add_column(column, overflow="fold")
    if marks:
        table.add_column("change")
    for b in bindings:
        row = [
            b.principal,
            b.resource_type.lower(),
            b.pattern_type.lower(),
            b.resource_name,
            b.operation,
        ]
        if marks:
            row.append(marks.get(b, ""))
        table.add_row(*row)
    return table


def _quota_table(title: str, quotas: list[Quota], marks: dict[Quota, str]) -> Table:
    table = Table(title=title)
    for column in ("principal", "quota", "value"):
        table.add_column(column)
    if marks:
        table.add_column("change")
    for q in quotas:
        value = f"{int(q.value)}" if q.value == int(q.value) else f"{q.value}"
        row = [f"User:{q.user}", q.key, value]
        if marks:
            row.append(marks.get(q, ""))
        table.add_row(*row)
    return table


@app.command("apply")
def apply_cmd(
    registry: RegistryOpt = None,
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Give every bus principal a new password")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only")] = False,
) -> None:
    """Create/update SCRAM users, ACLs and org quotas so the broker matches the registry
    (idempotent).

    Runs as the super user `admin`.  Orgs removed from the registry lose their user, ACLs and
    quotas.
    """
    from stixbus.kafka.acl_admin import apply

    settings = _settings(registry)
    result = apply(settings, load_registry(settings.registry_path), rotate=rotate, dry_run=dry_run)
    verb = "would" if dry_run else "did"
    marks = {b: "+ create" for b in result.acls.create}
    marks |= {b: "- delete" for b in result.acls.delete}
    if marks:
        changed = sorted(marks)
        out.print(_table(f"ACL changes ({verb})", changed, marks))
    qmarks = {q: "set" for q in result.quotas.set} | {q: "- remove" for q in result.quotas.remove}
    if qmarks:
        out.print(_quota_table(f"Quota changes ({verb})", sorted(qmarks), qmarks))
    out.print(
        f"users: {verb} create/re-key {len(result.users.upsert)} "
        f"({', '.join(result.users.upsert) or '-'}), delete {len(result.users.delete)} "
        f"({', '.join(result.users.delete) or '-'}); ACLs: {verb} create "
        f"{len(result.acls.create)}, delete {len(result.acls.delete)}; quotas: {verb} set "
        f"{len(result.quotas.set)}, remove {len(result.quotas.remove)}"
    )
    if result.users.upsert and not dry_run:
        out.print(f"passwords stored in {settings.credentials_file} (mode 600)")


@app.command("show")
def show_cmd() -> None:
    """Print the ACLs, SCRAM users and user quotas the broker enforces now."""
    from stixbus.kafka.acl_admin import show, show_quotas

    settings = get_settings()
    bindings, names = show(settings)
    out.print(_table("Effective ACLs (ALLOW; everything else is denied)", bindings, {}))
    quotas = show_quotas(settings)
    out.print(_quota_table("User quotas (per broker; absent: unlimited)", quotas, {}))
    out.print(f"SCRAM users: {', '.join(sorted(names)) or '-'} (admin is the super user)")


@app.command("plan")
def plan_cmd(registry: RegistryOpt = None) -> None:
    """Print the ACLs and quotas the registry implies, without contacting the broker."""
    settings = _settings(registry)
    reg = load_registry(settings.registry_path)
    bindings = derive_acls(reg, settings.topic_prefix, settings.app_id)
    out.print(_table(f"ACLs derived from {settings.registry_path}", bindings, {}))
    quotas = settings_quotas(reg, settings)
    out.print(_quota_table("User quotas (STIXBUS_QUOTA_* and the orgs' overrides)", quotas, {}))
    out.print(f"principals: {', '.join(users(reg))}")


@app.command("k8s")
def k8s_cmd(
    registry: RegistryOpt = None,
    cluster: Annotated[
        str, typer.Option("--cluster", help="Name of the Strimzi `Kafka` resource")
    ] = "stixbus",
    namespace: Annotated[str, typer.Option("--namespace", help="Kubernetes namespace")] = "stixbus",
    image: Annotated[str, typer.Option("--image", help="Worker image (Dockerfile)")] = (
        "stixbus:latest"
    ),
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker replicas")] = 2,
    replication: Annotated[
        int, typer.Option("--replication", min=1, help="Replicas of every topic")
    ] = 3,
    min_insync: Annotated[
        int, typer.Option("--min-insync-replicas", min=1, help="min.insync.replicas of topics")
    ] = 2,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the YAML here (default: stdout)")
    ] = None,
) -> None:
    """Print Strimzi KafkaTopic and KafkaUser resources (the ACLs and quotas of `security apply`)
    and the worker's ConfigMap, Deployment and NetworkPolicy, from the registry (no broker
    needed)."""
    from stixbus.kafka.strimzi import K8sTarget, manifests, to_yaml, topic_specs

    settings = _settings(registry)
    reg = load_registry(settings.registry_path)
    target = K8sTarget(
        cluster=cluster,
        namespace=namespace,
        image=image,
        workers=workers,
        replication=replication,
        min_insync_replicas=min_insync,
        standby_replicas=settings.table_standby_replicas,
    )
    specs = topic_specs(
        reg,
        settings.topic_prefix,
        settings.app_id,
        settings.partitions,
        settings.max_record_bytes,
        settings.limits.message_bytes,
    )
    docs = manifests(
        reg,
        settings.topic_prefix,
        settings.app_id,
        settings_quotas(reg, settings),
        specs,
        settings.registry_path.read_text(encoding="utf-8"),
        settings.agreements_path.read_text(encoding="utf-8"),
        settings.partitions,
        target,
    )
    text = to_yaml(docs, str(settings.registry_path))
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        out.print(f"{len(docs)} resources written to {output}")
