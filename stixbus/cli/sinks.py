"""`stixbus export <org> --format …` and `stixbus sinks serve|tsig`: what ISPs and network
devices load (RPZ zones, firewall lists, Suricata datasets, Zeek intel, a MISP feed).

`export` reads the subscriber's delivery topic from the beginning to its current end and
writes the format once; `sinks serve` keeps every subscriber's files current, serves the RPZ
zones by zone transfer (AXFR/IXFR with TSIG) and the lists and MISP feed over HTTPS with the
TAXII credentials.  See docs/sinks.md.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from schemas.sinks import Format
from stixbus.errors import UserError
from stixbus.kafka.client import run_on_broker
from stixbus.settings import get_settings

app = typer.Typer(no_args_is_help=True, help=__doc__)

_SINGLE_FILE = {Format.RPZ: "rpz.zone", Format.ZEEK: "zeek/intel.dat"}


def register(cli: typer.Typer) -> None:
    cli.command("export")(export)
    cli.add_typer(app, name="sinks")


def export(
    org: Annotated[str, typer.Argument(help="Subscriber org id")],
    fmt: Annotated[Format, typer.Option("--format", help="rpz, edl, suricata, zeek or misp")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="rpz/zeek: the file (default: stdout); edl/suricata/misp: a folder (required)",
        ),
    ] = None,
) -> None:
    """Write ORG's current list in one format, once (from its delivery topic)."""
    from egress.sinks.run import export as run_export

    settings = get_settings()
    if fmt not in _SINGLE_FILE and out is None:
        raise UserError(
            f"--format {fmt.value} writes several files", "give --out FOLDER to write them into"
        )
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) if fmt in _SINGLE_FILE else out
        assert folder is not None
        run_on_broker(run_export(settings, org, fmt, folder))
        if fmt in _SINGLE_FILE:
            data = (Path(scratch) / org / _SINGLE_FILE[fmt]).read_bytes()
            if out is None:
                sys.stdout.buffer.write(data)
            else:
                from stixbus.files import atomic_write

                atomic_write(out, data, 0o644)
        else:
            written = sorted(p for p in (folder / org).rglob("*") if p.is_file())
            for path in written:
                if not path.name.startswith("."):
                    typer.echo(str(path))


@app.command()
def serve(loglevel: Annotated[str, typer.Option(help="Log level")] = "info") -> None:
    """Keep every subscriber's sinks current and serve zone transfers and HTTPS lists."""
    from egress.sinks.run import serve as run_serve

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        run_on_broker(run_serve(get_settings()))
    except KeyboardInterrupt:
        pass


@app.command()
def tsig(org: Annotated[str, typer.Argument(help="Subscriber org id")]) -> None:
    """Print ORG's TSIG key as a BIND `key` statement (give it to the ISP, over a safe channel)."""
    from egress.sinks.dns import tsig_secret
    from egress.sinks.run import sinks_config, subscriber_orgs

    settings = get_settings()
    if org not in subscriber_orgs(settings):
        raise UserError(f"{org!r} is not a subscriber", "name a subscriber org id")
    config = sinks_config(settings).for_org(org)
    import base64

    secret = base64.b64encode(tsig_secret(config, settings.home)).decode()
    typer.echo(
        f'key "{config.key_name}" {{\n    algorithm {config.tsig_algorithm};\n'
        f'    secret "{secret}";\n}};\n# zone {config.zone}'
    )
