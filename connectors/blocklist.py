"""Blocklist connector: CSV and plain-text feeds of URLs, domains, IPs/CIDRs and file hashes.

Values are canonicalised by the bus core (`stixbus.core.canonical`, the one canonicaliser: the
same refanging, IDN, URL and CIDR rules the dedup key uses).  Each good line becomes a STIX 2.1
indicator whose id is UUIDv5 over (id scheme, source name, canonical value) and whose
`created`/`modified`/`valid_from` come from the entry's first-seen time, kept in the state file.
Re-reading the same list therefore publishes nothing new; only entries not seen before are
published.  With `revoke_missing`, an entry that disappears from the list is published
once more as a new version with `revoked: true` (modified = now).  Revocation is final: if the
value comes back later it gets a new id (generation 2, 3, …).  When the id scheme changes
(`ID_SCHEME`, moved with the canonical form), the next run revokes every id of the old scheme and
publishes the live entries again under their new ids.

Bad lines never reach the bus (they are not STIX) and never stop the import: the run's report
lists each with its line number and the rule it broke, as `Rejection` records (the model receipts
use), printed by `stixbus connector run` and written to `--report FILE`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import hmac
import io
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, model_validator

from connectors.base import (
    CONNECTOR_NAMESPACE,
    ConnectorError,
    PullConfig,
    Report,
    StateFile,
    Submitter,
    now_utc,
    read_source,
    secret_from_env,
)
from schemas.envelope import Reason
from schemas.tlp import TLP
from stixbus.core.canonical import (
    CanonicalError,
    canonical_domain,
    canonical_hash,
    canonical_ip,
    canonical_url,
    refang,
)
from stixbus.core.ids import parse_time, stix_time, uuid5
from stixbus.secret_files import connector_id_key
from stixbus.settings import Settings


class IndicatorType(StrEnum):
    URL = "url"
    DOMAIN = "domain"
    IP = "ip"  # IPv4/IPv6 address or CIDR network
    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"
    HASH = "hash"  # md5/sha1/sha256 told apart by length
    AUTO = "auto"  # any of the above, told apart by shape


class BlocklistConfig(PullConfig):
    connector: Literal["blocklist"] = "blocklist"
    preset: Literal["urlhaus", "ip-list"] | None = Field(
        default=None, description="Fill format/columns/type for a known feed layout"
    )
    source: str = Field(description="Path, file:// or http(s):// URL of the list")
    api_key_env: str | None = Field(default=None, description="Env var holding an API key")
    api_key_header: str = Field(default="Auth-Key", description="Header that carries the API key")
    format: Literal["csv", "text"] = "text"
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    has_header: bool = Field(default=False, description="CSV: first non-comment line is a header")
    value_column: int | str = Field(default=0, description="CSV column (0-based index or name)")
    first_seen_column: int | str | None = Field(
        default=None, description="CSV column with the entry's first-seen time (else: first read)"
    )
    type: IndicatorType = IndicatorType.AUTO
    labels: list[str] = Field(default_factory=lambda: ["malicious-activity"])
    indicator_types: list[str] = Field(default_factory=lambda: ["malicious-activity"])
    tlp: str | None = Field(
        default="clear", description="TLP of every indicator; null: org default"
    )
    confidence: int | None = Field(default=None, ge=0, le=100)
    valid_for_days: float | None = Field(
        default=None, gt=0, description="valid_until = first seen + this TTL"
    )
    comment_prefix: str = "#"
    revoke_missing: bool = Field(
        default=False, description="Revoke entries that disappear from the list"
    )
    max_revoke_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Refuse to revoke more than this share of live entries in one run "
        "(a truncated download must not revoke the whole list)",
    )
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            return {**PRESETS[data["preset"]], **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> BlocklistConfig:
        try:
            if self.tlp is not None:
                TLP.parse(self.tlp)
        except ValueError as exc:
            raise ValueError(f"tlp: {exc}") from None
        if self.format == "text" and (self.first_seen_column is not None or self.has_header):
            raise ValueError("first_seen_column/has_header only apply to format: csv")
        return self


PRESETS: dict[str, dict[str, Any]] = {
    # abuse.ch URLhaus CSV: id,dateadded,url,url_status,last_online,threat,tags,urlhaus_link,…
    # The header line is a comment ("# id,dateadded,…").
    "urlhaus": {
        "format": "csv",
        "value_column": 2,
        "first_seen_column": 1,
        "type": "url",
        "labels": ["malicious-activity", "malware-distribution"],
        "indicator_types": ["malicious-activity"],
        "comment_prefix": "#",
        "revoke_missing": True,
    },
    # One IPv4/IPv6 address or CIDR per line, '#' comments (Spamhaus DROP-style ';' also works
    # with comment_prefix: ';').
    "ip-list": {
        "format": "text",
        "type": "ip",
        "labels": ["malicious-activity"],
        "indicator_types": ["malicious-activity"],
        "comment_prefix": "#",
    },
}


# -- pure parsing -------------------------------------------------------------------------


class BadLine(CanonicalError):
    """A line that is not a valid entry; the message says why and what is expected.  Values the
    core canonicaliser refuses raise its `CanonicalError` (BadLine's base) directly."""


@dataclass(frozen=True)
class Entry:
    kind: str  # url, domain-name, ipv4-addr, ipv6-addr, md5, sha1, sha256
    value: str  # canonical value
    first_seen: str | None = None  # STIX timestamp from the feed, if it has one
    line: int = 0


_HEX = re.compile(r"^[0-9a-fA-F]+$")
_HASH_LEN = {32: "md5", 40: "sha1", 64: "sha256"}
_HASH_ALGORITHM = {"md5": "MD5", "sha1": "SHA-1", "sha256": "SHA-256"}  # STIX hash names
# What auto-detection takes for an address (its errors then say what is wrong with the address).
_IP_SHAPE = re.compile(r"^[0-9.]+(?:/[0-9]*)?$|^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:/[0-9]*)?$")


def _ip(value: str) -> tuple[str, str]:
    """('ipv4-addr'|'ipv6-addr', canonical address or network), by the core's rules."""
    version = 6 if ":" in value else 4
    return f"ipv{version}-addr", canonical_ip(value, version).value


def _hash(value: str, algorithm: str | None) -> tuple[str, str]:
    found = _HASH_LEN.get(len(value)) if _HEX.match(value) else None
    kind = algorithm or found
    if kind is None:
        raise BadLine(
            f"{value!r} is not an md5/sha1/sha256 hash: give 32, 40 or 64 hexadecimal digits "
            f"(it has {len(value)} characters)"
        )
    return kind, canonical_hash(_HASH_ALGORITHM[kind], value).value


def parse_value(text: str, kind: IndicatorType) -> tuple[str, str]:
    """(entry kind, canonical value) for one raw value; BadLine or CanonicalError if bad.

    The canonical form is the core's (`stixbus.core.canonical`): refanged, IDN as punycode, dot
    segments removed, percent-encoding normalised, host CIDRs folded.  Only telling the kinds
    apart (type: auto) is the connector's own."""
    value = text.strip()
    if not value:
        raise BadLine("empty value")
    if kind is IndicatorType.URL:
        return "url", canonical_url(value).value
    if kind is IndicatorType.DOMAIN:
        return "domain-name", canonical_domain(value).value
    if kind is IndicatorType.IP:
        return _ip(value)
    if kind in (IndicatorType.MD5, IndicatorType.SHA1, IndicatorType.SHA256):
        return _hash(value, kind.value)
    if kind is IndicatorType.HASH:
        return _hash(value, None)
    # auto: by shape, on the refanged text
    fanged = refang(value)
    if "://" in fanged:
        return "url", canonical_url(value).value
    if _HEX.match(value) and len(value) >= 24:  # a digest, perhaps truncated
        return _hash(value, None)
    if _IP_SHAPE.match(fanged):
        return _ip(value)
    if "." in fanged.strip(".") and not any(c.isspace() for c in fanged):
        return "domain-name", canonical_domain(value).value
    raise BadLine(f"{value!r} is not a URL, domain, IP/CIDR or md5/sha1/sha256 hash")


def _column(row: list[str], column: int | str, header: list[str] | None, line: int) -> str:
    if isinstance(column, str):
        if header is None or column not in header:
            raise ConnectorError(
                f"column {column!r} is not in the CSV header {header!r} (line {line}): "
                "fix value_column/first_seen_column or set has_header"
            )
        column = header.index(column)
    if column >= len(row):
        raise BadLine(f"has {len(row)} columns, the value is expected in column {column}")
    return row[column]


def parse_lines(
    text: str, config: BlocklistConfig, report: Report | None = None
) -> Iterator[Entry]:
    """Entries of a list; bad lines go to `report.rejections` with their line number."""
    header: list[str] | None = None
    prefix = config.comment_prefix
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or (prefix and line.startswith(prefix)):
            continue
        try:
            if config.format == "text":
                value = line.split()[0] if line.split() else line
                kind, canonical = parse_value(value, config.type)
                yield Entry(kind, canonical, None, number)
                continue
            row = next(csv.reader(io.StringIO(line), delimiter=config.delimiter))
            if config.has_header and header is None:
                header = [c.strip() for c in row]
                continue
            kind, canonical = parse_value(
                _column(row, config.value_column, header, number), config.type
            )
            first_seen = None
            if config.first_seen_column is not None:
                raw_seen = _column(row, config.first_seen_column, header, number)
                try:
                    first_seen = stix_time(parse_time(raw_seen))
                except ValueError:
                    raise BadLine(f"first-seen {raw_seen!r} is not an ISO 8601 time") from None
            yield Entry(kind, canonical, first_seen, number)
        except (CanonicalError, csv.Error) as exc:
            if report is not None:
                report.reject(
                    f"/line/{number}",
                    f"{config.name} line {number}: {exc} — fix or remove the line "
                    f"(got {raw[:200]!r})",
                    Reason.INVALID_PROPERTY,
                )


# -- STIX ---------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def pattern_for(kind: str, value: str) -> str:
    if kind in ("md5", "sha1", "sha256"):
        name = {"md5": "MD5", "sha1": "'SHA-1'", "sha256": "'SHA-256'"}[kind]
        return f"[file:hashes.{name} = '{value}']"
    return f"[{kind}:value = '{_quote(value)}']"


# The id scheme's generation.  It is part of every id's UUIDv5 name from generation 2 on, and
# moves whenever the canonical form of a value (and so the id derived from it) changes: the next
# import revokes every id minted under an older generation and publishes the entry again under
# the new one (see `retire_old_scheme`).
#   1: the connector's own canonicaliser (until the core's became the only one).
#   2: `stixbus.core.canonical`: dot segments, %-encoding, host CIDRs refused, refanging.
#   3: keyed (HMAC under the publishing org's connector id key): ids computable from public
#      inputs let another member publish an id first and so own it (docs/dedup.md → "Object
#      ownership"), making the CERT's later indicator reach nobody.
ID_SCHEME = 3


def indicator_id(
    source: str,
    kind: str,
    value: str,
    generation: int = 1,
    scheme: int = ID_SCHEME,
    id_key: bytes | None = None,
) -> str:
    """Deterministic for the publisher: over the id scheme, the source name and the canonical
    value (+ the revival generation after a revocation); from scheme 3 on keyed with `id_key`
    (`stixbus.secret_files.connector_id_key`), so nobody else can predict it."""
    prefix = "blocklist" if scheme == 1 else f"blocklist/v{scheme}"
    key = f"{prefix}:{source}:{kind}:{value}"
    if generation > 1:
        key += f":{generation}"
    if scheme < 3:
        return f"indicator--{uuid5(CONNECTOR_NAMESPACE, key)}"
    if id_key is None:
        raise ValueError(
            f"blocklist id scheme {scheme} needs the org's connector id key: "
            "pass id_key=connector_id_key(settings, org)"
        )
    digest = hmac.new(id_key, key.encode(), hashlib.sha256).digest()
    return f"indicator--{uuid.UUID(bytes=digest[:16], version=4)}"


def make_indicator(
    config: BlocklistConfig,
    kind: str,
    value: str,
    first_seen: str,
    generation: int = 1,
    revoked_at: str | None = None,
    scheme: int = ID_SCHEME,
    id_key: bytes | None = None,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": indicator_id(config.name, kind, value, generation, scheme, id_key),
        "created": first_seen,
        "modified": revoked_at or first_seen,
        "name": f"{kind} {value}"[:250],
        "pattern": pattern_for(kind, value),
        "pattern_type": "stix",
        "pattern_version": "2.1",
        "valid_from": first_seen,
        "indicator_types": list(config.indicator_types),
        "labels": list(config.labels),
    }
    if config.description:
        obj["description"] = config.description
    if config.valid_for_days:
        until = parse_time(first_seen) + timedelta(days=config.valid_for_days)
        obj["valid_until"] = stix_time(until)
    if config.confidence is not None:
        obj["confidence"] = config.confidence
    if config.tlp:
        obj["object_marking_refs"] = [TLP.parse(config.tlp).marking_id]
    if revoked_at:
        obj["revoked"] = True
    return obj


# -- id scheme changes -------------------------------------------------------------------


def retire_old_scheme(state: dict[str, Any], now: str) -> list[str]:
    """Move a state written under an older id scheme to `ID_SCHEME` (pure, on the state dict).

    Every entry of the old scheme that is not revoked yet goes to `state["retired"]` with a
    revocation time: the run publishes its old id once more as revoked, so no old id stays live.
    Entries that were live are carried over under their new canonical value with their first-seen
    time (so `created`/`valid_until` do not move) and `published: false`: the run publishes them
    under the new id if the list still has them.  Returns warnings for the report."""
    scheme = int(state.get("id_scheme", 1 if state.get("entries") else ID_SCHEME))
    state["id_scheme"] = ID_SCHEME
    if scheme == ID_SCHEME:
        return []
    warnings: list[str] = []
    retired: dict[str, dict[str, Any]] = state.setdefault("retired", {})
    carried: dict[str, dict[str, Any]] = {}
    for key, record in state.get("entries", {}).items():
        if record.get("revoked"):
            continue  # final; a later sighting gets a new-scheme id anyway
        retired[f"{scheme}|{key}"] = {
            "first_seen": record["first_seen"],
            "generation": record.get("generation", 1),
            "revoke_at": record.get("revoke_at") or max(now, _after(record["first_seen"])),
        }
        if record.get("revoke_at"):
            continue  # it had vanished from the list
        kind, value = key.split("|", 1)
        try:
            kind, value = parse_value(value, _KIND_TYPE.get(kind, IndicatorType.AUTO))
        except CanonicalError as exc:
            warnings.append(
                f"id scheme {scheme}→{ID_SCHEME}: {key.split('|', 1)[1]!r} is no longer a valid "
                f"entry ({exc}); its old id is revoked and it is not published again"
            )
            continue
        new_key = f"{kind}|{value}"
        held = carried.get(new_key)
        if held is None or record["first_seen"] < held["first_seen"]:
            carried[new_key] = {
                "first_seen": record["first_seen"],
                "generation": 1,
                "published": False,
            }
    state["entries"] = carried
    return warnings


_KIND_TYPE = {
    "url": IndicatorType.URL,
    "domain-name": IndicatorType.DOMAIN,
    "ipv4-addr": IndicatorType.IP,
    "ipv6-addr": IndicatorType.IP,
    "md5": IndicatorType.MD5,
    "sha1": IndicatorType.SHA1,
    "sha256": IndicatorType.SHA256,
}


# -- the run ------------------------------------------------------------------------------


async def run_once(
    config: BlocklistConfig,
    settings: Settings,
    org_id: str,
    report: Report,
    submitter: Submitter,
    progress_total: Callable[[int], None] | None = None,
) -> None:
    """Fetch the list, publish new entries, revoke vanished ones; state moves after each ack."""
    headers = {}
    key = secret_from_env(config.api_key_env, f"blocklist {config.name}")
    if key:
        headers[config.api_key_header] = key
    raw = read_source(config.source, headers=headers) if headers else read_source(config.source)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConnectorError(
            f"blocklist {config.source} is not UTF-8 (byte {exc.start}): re-encode it as UTF-8"
        ) from None
    store = StateFile(config.state_path(settings))
    state = store.load()
    id_key = connector_id_key(settings, org_id)
    now = stix_time(now_utc())
    report.warnings.extend(f"{config.name}: {w}" for w in retire_old_scheme(state, now))
    entries: dict[str, dict[str, Any]] = state.setdefault("entries", {})
    retired: dict[str, dict[str, Any]] = state.setdefault("retired", {})

    present: dict[str, Entry] = {}
    for entry in parse_lines(text, config, report):
        report.read += 1
        present.setdefault(f"{entry.kind}|{entry.value}", entry)

    # 1. Record first-seen (and generation) of every new entry *before* publishing, so a crash
    #    after the broker acked cannot re-mint the entry with another `created`.
    fresh: list[str] = []
    for key_, entry in present.items():
        known = entries.get(key_)
        if known is not None and known.get("revoke_at") and not known.get("revoked"):
            report.unchanged += 1  # finish the pending revocation first; revived next run
        elif known is None or known.get("revoked"):
            generation = (known or {}).get("generation", 0) + 1
            entries[key_] = {
                "first_seen": entry.first_seen or now,
                "generation": generation,
                "published": False,
            }
            fresh.append(key_)
        elif not known.get("published"):
            fresh.append(key_)
        else:
            report.unchanged += 1
    store.save(state)

    # 2. Vanished entries to revoke (guarded against a truncated download).  The revocation
    #    time is saved before publishing too, so a re-send is the identical version.
    if config.revoke_missing:
        live = [
            k
            for k, v in entries.items()
            if v.get("published") and not v.get("revoked") and not v.get("revoke_at")
        ]
        vanished = [k for k in live if k not in present]
        if vanished and len(vanished) > config.max_revoke_fraction * len(live):
            report.warnings.append(
                f"{config.name}: {len(vanished)} of {len(live)} live entries vanished, over the "
                f"max_revoke_fraction {config.max_revoke_fraction}: no revocation this run "
                "(a truncated or broken download?) — raise the fraction if it is intended"
            )
            vanished = []
        for k in vanished:
            entries[k]["revoke_at"] = max(now, _after(entries[k]["first_seen"]))
        if vanished:
            store.save(state)
    to_revoke = [k for k, v in entries.items() if v.get("revoke_at") and not v.get("revoked")]
    if progress_total:
        progress_total(len(fresh) + len(to_revoke) + len(retired))

    submitter.checkpoint = lambda: store.save(state)

    def mark(key_: str, field: str) -> None:
        entries[key_][field] = True

    def forget(key_: str) -> None:
        retired.pop(key_, None)

    # One unit per entry: a unit is committed as soon as the submission carrying it is acked.
    for key_ in fresh:
        kind, value = key_.split("|", 1)
        record = entries[key_]
        obj = make_indicator(
            config, kind, value, record["first_seen"], record["generation"], id_key=id_key
        )
        await submitter.add([obj], functools.partial(mark, key_, "published"))
    for key_ in to_revoke:
        kind, value = key_.split("|", 1)
        record = entries[key_]
        obj = make_indicator(
            config,
            kind,
            value,
            record["first_seen"],
            record["generation"],
            record["revoke_at"],
            id_key=id_key,
        )
        report.revoked += 1
        await submitter.add([obj], functools.partial(mark, key_, "revoked"))
    # Ids of an older id scheme: revoked once, then forgotten.
    for key_, record in list(retired.items()):
        scheme, kind, value = key_.split("|", 2)
        obj = make_indicator(
            config,
            kind,
            value,
            record["first_seen"],
            record["generation"],
            record["revoke_at"],
            scheme=int(scheme),
            id_key=id_key,
        )
        report.revoked += 1
        await submitter.add([obj], functools.partial(forget, key_))
    await submitter.flush()


def _after(stamp: str) -> str:
    """One millisecond after a STIX timestamp (a revocation must be a newer version)."""
    return stix_time(parse_time(stamp) + timedelta(milliseconds=1))
