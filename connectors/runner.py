"""Run a connector by kind: load its config, wire state, publishing and progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from connectors import blocklist, inbox, misp, taxii
from connectors.base import (
    ConnectorConfig,
    PullConfig,
    Report,
    Submitter,
    load_config,
    resolve_org,
)
from stixbus.settings import Settings


@dataclass(frozen=True)
class Kind:
    name: str
    config: type[ConnectorConfig]
    summary: str


KINDS: dict[str, Kind] = {
    "taxii": Kind("taxii", taxii.TaxiiConfig, "Poll TAXII 2.1 collections (added_after + next)"),
    "misp": Kind(
        "misp", misp.MispConfig, "Read a MISP feed (manifest.json + events) via misp-stix"
    ),
    "blocklist": Kind(
        "blocklist",
        blocklist.BlocklistConfig,
        "CSV/plain-text lists of URLs, domains, IPs/CIDRs, hashes",
    ),
    "inbox": Kind("inbox", inbox.InboxConfig, "Serve a TAXII 2.1 inbox: orgs push with a token"),
}


def load(kind: str, path: Path) -> ConnectorConfig:
    from connectors.base import ConnectorError

    if kind not in KINDS:
        raise ConnectorError(
            f"unknown connector {kind!r}: use one of {', '.join(KINDS)} (`stixbus connector list`)"
        )
    return load_config(path, KINDS[kind].config, kind)


async def run_once(
    config: PullConfig,
    settings: Settings,
    *,
    progress: Callable[[int], None] | None = None,
    progress_total: Callable[[int], None] | None = None,
) -> Report:
    """One pass over the source; returns what it did.  Raises ConnectorError on failure."""
    org = resolve_org(settings, config.org)
    report = Report(config.connector, config.name, org.id)
    submitter = Submitter(
        settings,
        org,
        f"{config.connector}:{config.name}",
        report,
        max_bytes=config.max_submission_bytes,
        progress=progress,
    )
    if isinstance(config, blocklist.BlocklistConfig):
        await blocklist.run_once(config, settings, org.id, report, submitter, progress_total)
    elif isinstance(config, taxii.TaxiiConfig):
        await taxii.run_once(config, settings, report, submitter, progress_total)
    elif isinstance(config, misp.MispConfig):
        await misp.run_once(config, settings, report, submitter, progress_total)
    else:  # pragma: no cover - KINDS and this chain move together
        raise TypeError(f"no runner for {type(config).__name__}")
    return report
