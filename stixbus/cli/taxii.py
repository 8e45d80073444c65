"""`stixbus taxii serve|credentials …`: the subscribers' TAXII 2.1 server and its credentials.

Credentials are per org, HTTP Basic (username + generated password, what Sentinel and Splunk
send) or API-key bearer tokens; only their scrypt hashes are stored, in
`<STIXBUS_HOME>/secrets/taxii-credentials.yaml` (STIXBUS_TAXII_CREDENTIALS_FILE).  The secret is
printed once, when it is made.  See docs/taxii.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from schemas.org import load_registry
from stixbus.errors import UserError
from stixbus.settings import Settings, get_settings

app = typer.Typer(no_args_is_help=True, help=__doc__)
credentials = typer.Typer(
    no_args_is_help=True, help="Per-org credentials of the pull servers (hashed at rest)."
)
app.add_typer(credentials, name="credentials")
out = Console()
err = Console(stderr=True)

FileOpt = Annotated[
    Path | None,
    typer.Option("--file", help="Credentials file (default: STIXBUS_TAXII_CREDENTIALS_FILE)"),
]


def credentials_path(settings: Settings, given: Path | None = None) -> Path:
    from egress.credentials import default_path

    return given or settings.taxii.credentials_file or default_path(settings.home)


def _show_secret(kind: str, username: str | None, secret: str, cred_id: str) -> None:
    err.print(f"credential {cred_id}: store this now, it is not shown again", highlight=False)
    if kind == "basic":
        err.print(f"username: {username}", highlight=False)
        err.print("password:", highlight=False)
    else:
        err.print("token (send as 'Authorization: Bearer <token>'):", highlight=False)
    print(secret)  # stdout, alone on its line, so scripts can capture it


@credentials.command("add")
def add_cmd(
    org: Annotated[str, typer.Argument(help="Subscribing org id (from the registry)")],
    kind: Annotated[
        str, typer.Option("--kind", help="basic (username/password) or token (bearer)")
    ] = "basic",
    username: Annotated[
        str | None, typer.Option("--username", help="Basic username (default: the org id)")
    ] = None,
    label: Annotated[str, typer.Option("--label", help="A note, e.g. the SIEM's name")] = "",
    file: FileOpt = None,
) -> None:
    """Make a credential for ORG and print its secret once."""
    from egress.credentials import add_credential

    settings = get_settings()
    registry = load_registry(settings.registry_path)
    if org not in {o.id for o in registry.subscribers}:
        raise UserError(
            f"{org!r} is not a subscriber in {settings.registry_path}",
            "give the id of an org with the subscriber role",
        )
    if kind not in ("basic", "token"):
        raise UserError(f"--kind {kind!r} is not basic or token", "use --kind basic or token")
    record, secret = add_credential(
        credentials_path(settings, file),
        org,
        "basic" if kind == "basic" else "token",
        username,
        label,
    )
    _show_secret(record.kind, record.username, secret, record.id)


@credentials.command("rotate")
def rotate_cmd(
    credential_id: Annotated[str, typer.Argument(help="Credential id (see `list`)")],
    file: FileOpt = None,
) -> None:
    """Give a credential a new secret (the old one stops working) and print it once."""
    from egress.credentials import rotate_credential

    record, secret = rotate_credential(credentials_path(get_settings(), file), credential_id)
    _show_secret(record.kind, record.username, secret, record.id)


@credentials.command("revoke")
def revoke_cmd(
    credential_id: Annotated[str, typer.Argument(help="Credential id (see `list`)")],
    file: FileOpt = None,
) -> None:
    """Delete a credential: the servers refuse it from their next request on."""
    from egress.credentials import revoke_credential

    record = revoke_credential(credentials_path(get_settings(), file), credential_id)
    out.print(f"revoked {record.kind} credential {record.id} of {record.org}", highlight=False)


@credentials.command("list")
def list_cmd(
    org: Annotated[str | None, typer.Option("--org", help="Only this org's")] = None,
    file: FileOpt = None,
) -> None:
    """List credentials (never their secrets)."""
    from egress.credentials import list_credentials

    table = Table(title="TAXII / sink credentials")
    for column in ("id", "org", "kind", "username", "label", "created", "rotated"):
        table.add_column(column)
    for c in list_credentials(credentials_path(get_settings(), file), org):
        table.add_row(c.id, c.org, c.kind, c.username or "—", c.label, c.created, c.rotated or "—")
    out.print(table)
