"""`stixbus connector …`: run the CERT publishing connectors (TAXII pull, MISP, blocklist, inbox).

A connector config is YAML validated by pydantic (examples in deploy/connectors/); secrets come
from environment variables named in `*_env` fields.  See docs/connectors.md.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stixbus.kafka.client import run_on_broker
from stixbus.settings import Settings, get_settings

if TYPE_CHECKING:
    from connectors.base import PullConfig, Report
    from connectors.inbox import InboxConfig

# The connectors (HTTP clients, MISP's converter) are imported by the commands that run them,
# not at CLI start: every `stixbus` invocation, the worker included, loads this module.

app = typer.Typer(no_args_is_help=True, help=__doc__)
out = Console()
err = Console(stderr=True)


@app.command("list")
def list_cmd() -> None:
    """List connector kinds and the example configs in deploy/connectors/."""
    from connectors.runner import KINDS

    table = Table(title="stixbus connectors")
    table.add_column("kind")
    table.add_column("what it does")
    table.add_column("example configs")
    examples_dir = get_settings().deploy_dir / "connectors"
    for kind in KINDS.values():
        examples = sorted(examples_dir.glob(f"{kind.name}*.yaml")) if examples_dir.is_dir() else []
        table.add_row(
            kind.name,
            kind.summary,
            "\n".join(str(p) for p in examples) or "—",
        )
    out.print(table)


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as progress:
        yield progress


def _print_report(report: Report) -> None:
    table = Table(title=f"{report.connector} {report.name} → ingest of {report.org}")
    table.add_column("read", justify="right")
    table.add_column("published objects", justify="right")
    table.add_column("submissions", justify="right")
    table.add_column("unchanged", justify="right")
    table.add_column("revoked", justify="right")
    table.add_column("bad input", justify="right")
    table.add_row(
        str(report.read),
        str(report.published_objects),
        str(len(report.submissions)),
        str(report.unchanged),
        str(report.revoked),
        str(len(report.rejections)),
    )
    out.print(table)
    for rejection in report.rejections[:50]:
        out.print(f"  [red]rejected[/red] {escape(rejection.pointer)}: {escape(rejection.message)}")
    if len(report.rejections) > 50:
        out.print(f"  … {len(report.rejections) - 50} more (see --report FILE)")
    for warning in report.warnings:
        out.print(f"  [yellow]warning[/yellow] {escape(warning)}")
    if report.submissions:
        out.print(
            f"receipts: `stixbus receipts --as {report.org}` (submission ids: "
            f"{', '.join(report.submissions[:3])}{' …' if len(report.submissions) > 3 else ''})"
        )


def _one_pass(config: PullConfig, settings: Settings, show: bool) -> Report:
    from connectors.runner import run_once

    with _progress(show) as progress:
        label = f"{config.connector} {config.name}"
        task = progress.add_task(label, total=None) if progress else None

        def advance(n: int) -> None:
            if progress is not None and task is not None:
                progress.advance(task, n)

        def total(n: int) -> None:
            if progress is not None and task is not None:
                progress.update(task, total=n)

        return run_on_broker(run_once(config, settings, progress=advance, progress_total=total))


def _run_pull(config: PullConfig, once: bool, report_file: Path | None, show: bool) -> None:
    from connectors.base import ConnectorError, resolve_org

    settings = get_settings()
    resolve_org(settings, config.org)
    while True:
        try:
            report = _one_pass(config, settings, show)
        except ConnectorError as exc:
            if once:
                raise
            err.print(f"stixbus: {escape(str(exc))} (retrying in {config.interval_seconds}s)")
            time.sleep(config.interval_seconds)
            continue
        _print_report(report)
        if report_file:
            report_file.write_text(report.to_json() + "\n", encoding="utf-8")
        if once:
            if report.rejections:
                sys.exit(2)  # ran, but some input was bad: say so to cron/CI
            return
        time.sleep(config.interval_seconds)


@app.command("run")
def run_cmd(
    name: Annotated[str, typer.Argument(help="Connector kind: taxii, misp, blocklist or inbox")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Connector config YAML")],
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit (cron)")] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the run report (JSON) here")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Run connector NAME with its config: one pass with --once, else poll every interval.

    Exit codes: 0 done, 1 failed (source down, auth refused, bad config), 2 done but some
    input lines/events were bad (listed in the report).
    """
    from connectors.base import PullConfig
    from connectors.inbox import InboxConfig
    from connectors.runner import load

    loaded = load(name, config)
    if isinstance(loaded, InboxConfig):
        _serve_inbox(loaded)
        return
    assert isinstance(loaded, PullConfig)
    try:
        _run_pull(loaded, once, report, progress and sys.stderr.isatty())
    except KeyboardInterrupt:
        sys.exit(130)


def _serve_inbox(config: InboxConfig) -> None:
    from connectors.inbox import serve

    settings = get_settings()
    out.print(
        f"TAXII 2.1 inbox on {'https' if config.tls else 'http'}://{config.host}:{config.port}"
        "/taxii2/ "
        f"(api root {config.api_root}, tokens {config.tokens_file})"
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, settings, stop)

    run_on_broker(main())


@app.command("token")
def token_cmd(
    org: Annotated[str, typer.Argument(help="Org id the token publishes as")],
    tokens: Annotated[Path, typer.Option("--tokens", help="Token file (YAML, hashes only)")],
    label: Annotated[str, typer.Option(help="What the token is for")] = "",
) -> None:
    """Create an inbox API token for ORG; prints it once (only its scrypt hash is stored)."""
    from connectors.base import resolve_org
    from connectors.inbox import collection_id
    from connectors.inbox_auth import create_token

    resolve_org(get_settings(), org)
    token = create_token(tokens, org, label)
    sys.stdout.write(token + "\n")
    err.print(
        f"token for {org} added to {tokens}; collection id {collection_id(org)} — "
        "store the token now, it cannot be shown again"
    )
