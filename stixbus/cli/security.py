"""`stixbus security apply|show|plan`: SCRAM users and Kafka ACLs derived from the org registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from schemas.org import load_registry
from stixbus.kafka.acls import AclBinding, derive_acls, users
from stixbus.settings import Settings, get_settings

app = typer.Typer(
    no_args_is_help=True,
    help="Kafka principals and ACLs from the org registry (docs/security.md).",
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


@app.command("apply")
def apply_cmd(
    registry: RegistryOpt = None,
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Give every bus principal a new password")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only")] = False,
) -> None:
    """Create/update SCRAM users and ACLs so the broker matches the registry (idempotent).

    Runs as the super user `admin`.  Orgs removed from the registry lose their user and ACLs.
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
    out.print(
        f"users: {verb} create/re-key {len(result.users.upsert)} "
        f"({', '.join(result.users.upsert) or '-'}), delete {len(result.users.delete)} "
        f"({', '.join(result.users.delete) or '-'}); ACLs: {verb} create "
        f"{len(result.acls.create)}, delete {len(result.acls.delete)}"
    )
    if result.users.upsert and not dry_run:
        out.print(f"passwords stored in {settings.credentials_file} (mode 600)")


@app.command("show")
def show_cmd() -> None:
    """Print the ACLs and SCRAM users the broker enforces now."""
    from stixbus.kafka.acl_admin import show

    bindings, names = show(get_settings())
    out.print(_table("Effective ACLs (ALLOW; everything else is denied)", bindings, {}))
    out.print(f"SCRAM users: {', '.join(sorted(names)) or '-'} (admin is the super user)")


@app.command("plan")
def plan_cmd(registry: RegistryOpt = None) -> None:
    """Print the ACLs the registry implies, without contacting the broker."""
    settings = _settings(registry)
    reg = load_registry(settings.registry_path)
    bindings = derive_acls(reg, settings.topic_prefix, settings.app_id)
    out.print(_table(f"ACLs derived from {settings.registry_path}", bindings, {}))
    out.print(f"principals: {', '.join(users(reg))}")
