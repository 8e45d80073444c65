"""`stixbus` command line: run the local bus, publish, consume, inspect.

A failure you can act on is one line on stderr (`stixbus: <what> — <what to do>`) and exit
status 1.  Any other exception is a bug and shows its traceback.  `STIXBUS_DEBUG=1` shows the
traceback of the one-line failures too.
"""

from __future__ import annotations

import os
import sys

import click
import typer
from rich.console import Console

from stixbus.cli import (
    agreements,
    audit,
    connector,
    messages,
    security,
    sinks,
    stack,
    status,
    taxii,
)
from stixbus.errors import StixbusError
from stixbus.files import private_files

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
err = Console(stderr=True)

# One module per command group (stixbus/cli/<group>.py).  Top-level commands are registered by
# the module's `register(cli)`; sub-command groups expose `app: typer.Typer`.
stack.register(cli)  # up, down, worker, topics, settings
messages.register(cli)  # publish, consume, receipts
cli.command("status")(status.status)
cli.command("explain")(agreements.explain)
cli.add_typer(audit.app, name="audit")  # decisions as JSON lines; `audit verify`
cli.add_typer(agreements.app, name="agreements")
cli.add_typer(security.app, name="security")
cli.add_typer(connector.app, name="connector")
cli.add_typer(taxii.app, name="taxii")
sinks.register(cli)  # export, sinks serve|tsig


def main() -> None:
    """The `stixbus` entry point (pyproject.toml [project.scripts])."""
    # Every file the CLI, the worker and the connectors create (state, logs, credentials) is
    # the owner's alone: folders 0700, files 0600 (docs/security.md, "Files").
    private_files()
    try:
        # standalone_mode=False returns typer.Exit codes instead of exiting: pass them on.
        code = cli(standalone_mode=False)
    except StixbusError as exc:
        if os.environ.get("STIXBUS_DEBUG"):
            raise
        err.print(f"stixbus: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
    except (click.exceptions.Abort, KeyboardInterrupt):
        sys.exit(130)
    except click.ClickException as exc:  # usage errors: what click prints in standalone mode
        exc.show()
        sys.exit(exc.exit_code)
    if isinstance(code, int) and code != 0:
        sys.exit(code)


if __name__ == "__main__":
    main()
