"""The TAXII 2.1 read side, pure: a collection's index, filters, pages and signed `next` tokens.

The server (egress/taxii/server.py) feeds each subscriber's delivery topic into one
`CollectionIndex` and answers requests with `page`; nothing here does I/O.

Order and `date_added`:

- every record has a position `(date_added_us, partition, offset)`; `date_added` is the
  record's broker append time (the delivery topics use `LogAppendTime`) in microseconds, made
  strictly increasing per partition (a record sharing its predecessor's time, as every record of
  one producer batch does, gets the predecessor's time plus 1 µs), so the same log gives the
  same positions on every replica and after a restart, and no two records of a partition share
  a `date_added`;
- only records before the *horizon* (a time the shell computes: every partition has been read
  past it) are visible, so a record can never appear behind a position a client already passed;
- a page never ends inside a `date_added` the next matching record shares (only records of
  different partitions can: unless the whole page is that instant), so resuming with
  `added_after = X-TAXII-Date-Added-Last` skips nothing;
- a byte-identical `(id, modified)` record (an at-least-once replay) keeps the first one's
  place and `date_added`; a different body under the same `(id, modified)` replaces it.

`next` is `base64url(json) + "." + base64url(hmac_sha256)`: the collection, the position of the
page's last record and the filters, signed with the server's key (shared by replicas), so any
replica serves the next page, a restart loses no place and a tampered token fails `verify_next`.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from stixbus.core.ids import epoch_us, from_epoch_us

TAXII_MEDIA = "application/taxii+json;version=2.1"
TAXII_MEDIA_BASE = "application/taxii+json"
STIX_MEDIA = "application/stix+json;version=2.1"
SPEC_VERSION = "2.1"
TOKEN_VERSION = 2  # 2: positions in microseconds

Position = tuple[int, int, int]  # (date_added_us, partition, offset)


class BadRequest(ValueError):
    """A filter, limit or `next` token the server cannot use (HTTP 400)."""


def collection_id(prefix: str, org: str) -> str:
    """The org's collection id: deterministic, in UUIDv4 form (some SIEM portals check it)."""
    digest = bytearray(hashlib.sha256(f"stixbus-taxii-collection|{prefix}|{org}".encode()).digest())
    return str(uuid.UUID(bytes=bytes(digest[:16]), version=4))


def taxii_time(us: int) -> str:
    """RFC 3339, UTC, microsecond precision (`date_added` is unique per partition in µs)."""
    return from_epoch_us(us).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_timestamp_us(text: str, what: str) -> int:
    """Microseconds since the epoch of an RFC 3339 timestamp; BadRequest otherwise."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"{what} {text!r} is not an RFC 3339 timestamp: send e.g. 2026-01-31T12:00:00.000Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return epoch_us(moment)


# -- filters ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The filters of one request (TAXII 2.1 section 3.4)."""

    added_after_us: int | None = None
    types: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    versions: frozenset[str] = frozenset({"last"})  # "last", "first", "all" or timestamps
    spec_versions: frozenset[str] = frozenset()

    def canonical(self) -> dict[str, Any]:
        return {
            "a": self.added_after_us,
            "t": sorted(self.types),
            "i": sorted(self.ids),
            "v": sorted(self.versions),
            "s": sorted(self.spec_versions),
        }

    @classmethod
    def from_canonical(cls, data: Any) -> Filters:
        if not isinstance(data, dict):
            raise BadRequest("the next token carries no filters")
        try:
            added = data["a"]
            if added is not None and not isinstance(added, int):
                raise TypeError
            return cls(
                added,
                frozenset(_strings(data["t"])),
                frozenset(_strings(data["i"])),
                frozenset(_strings(data["v"])),
                frozenset(_strings(data["s"])),
            )
        except (KeyError, TypeError):
            raise BadRequest("the next token's filters are malformed") from None


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError
    return value


def _split(value: str | None) -> frozenset[str]:
    return frozenset(v.strip() for v in (value or "").split(",") if v.strip())


def parse_filters(query: dict[str, str], *, versions_default: str = "last") -> Filters:
    """Filters from a request's query parameters (`added_after`, `match[type|id|version|
    spec_version]`); BadRequest on a value the server cannot use."""
    added = query.get("added_after")
    versions = _split(query.get("match[version]")) or frozenset({versions_default})
    for v in versions:
        if v not in ("last", "first", "all"):
            parse_timestamp_us(v, "match[version]")
    spec = _split(query.get("match[spec_version]"))
    return Filters(
        added_after_us=None if added is None else parse_timestamp_us(added, "added_after"),
        types=_split(query.get("match[type]")),
        ids=_split(query.get("match[id]")),
        versions=versions,
        spec_versions=spec,
    )


def parse_limit(value: str | None, default: int, maximum: int) -> int:
    if value is None or value == "":
        return min(default, maximum)
    try:
        limit = int(value)
    except ValueError:
        raise BadRequest(f"limit {value!r} is not a whole number: send 1 to {maximum}") from None
    if limit < 1:
        raise BadRequest(f"limit {limit} is below 1: send 1 to {maximum}")
    return min(limit, maximum)


# -- next tokens ------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_next(key: bytes, collection: str, after: Position, filters: Filters) -> str:
    payload = orjson.dumps(
        {"v": TOKEN_VERSION, "c": collection, "p": list(after), "f": filters.canonical()}
    )
    mac = hmac.new(key, payload, "sha256").digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def verify_next(key: bytes, token: str, collection: str) -> tuple[Position, Filters]:
    """The position and filters a `next` token carries; BadRequest if it was not made by this
    bus for this collection, or was changed."""
    head, sep, tail = token.partition(".")
    try:
        payload, mac = _unb64(head), _unb64(tail)
    except (ValueError, TypeError):
        payload, mac = b"", b""
    expected = hmac.new(key, payload, "sha256").digest()
    if not sep or not hmac.compare_digest(mac, expected):
        raise BadRequest("the next token is not one this server issued: start without next")
    data = orjson.loads(payload)
    if not isinstance(data, dict) or data.get("v") != TOKEN_VERSION or data.get("c") != collection:
        raise BadRequest("the next token belongs to another collection: start without next")
    pos = data.get("p")
    if not (isinstance(pos, list) and len(pos) == 3 and all(isinstance(x, int) for x in pos)):
        raise BadRequest("the next token is malformed: start without next")
    return (pos[0], pos[1], pos[2]), Filters.from_canonical(data.get("f"))


# -- the index --------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Entry:
    """One version of one object in a collection."""

    pos: Position
    id: str
    type: str
    version: str  # modified, else created, else date_added
    version_us: int
    spec_version: str
    raw: bytes
    live: bool = True

    @property
    def date_added_us(self) -> int:
        return self.pos[0]


@dataclass
class ObjectVersions:
    entries: list[Entry] = field(default_factory=list)  # by position

    def alive(self) -> list[Entry]:
        return [e for e in self.entries if e.live]


@dataclass
class CollectionIndex:
    """Every version a collection's topic holds, in position order (see the module doc)."""

    entries: list[Entry] = field(default_factory=list)
    positions: list[Position] = field(default_factory=list)
    objects: dict[str, ObjectVersions] = field(default_factory=dict)
    last_us: dict[int, int] = field(default_factory=dict)  # partition -> last date_added
    dead: int = 0

    def __len__(self) -> int:
        return len(self.entries) - self.dead

    def add(
        self, partition: int, offset: int, timestamp_ms: int, raw: bytes | None, key: bytes | None
    ) -> bool:
        """Index one record; False when it adds nothing (a replay, an unusable record)."""
        if raw is None:  # a tombstone: the object left the collection
            if key is not None:
                for e in self.objects.pop(key.decode("utf-8", "replace"), ObjectVersions()).entries:
                    self._kill(e)
            return False
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            return False
        us = max(timestamp_ms * 1000, self.last_us.get(partition, -1) + 1)
        self.last_us[partition] = us
        object_id = obj["id"]
        version = obj.get("modified") or obj.get("created") or taxii_time(us)
        if not isinstance(version, str):
            return False
        try:
            version_us = parse_timestamp_us(version, "version")
        except BadRequest:
            return False
        versions = self.objects.setdefault(object_id, ObjectVersions())
        for old in versions.entries:
            if old.live and old.version_us == version_us:
                if old.raw == raw:
                    return False  # an at-least-once replay: same place, same date_added
                self._kill(old)  # same version, other bytes: the newer copy replaces it
        entry = Entry(
            pos=(us, partition, offset),
            id=object_id,
            type=str(obj.get("type", "")),
            version=version,
            version_us=version_us,
            spec_version=str(obj.get("spec_version", SPEC_VERSION)),
            raw=bytes(raw),
        )
        if not self.positions or entry.pos > self.positions[-1]:
            self.entries.append(entry)
            self.positions.append(entry.pos)
        else:
            at = bisect.bisect_left(self.positions, entry.pos)
            self.entries.insert(at, entry)
            self.positions.insert(at, entry.pos)
        versions.entries.append(entry)
        versions.entries.sort(key=lambda e: e.pos)
        return True

    def _kill(self, entry: Entry) -> None:
        if entry.live:
            entry.live = False
            self.dead += 1
        versions = self.objects.get(entry.id)
        if versions is not None and entry in versions.entries:
            versions.entries.remove(entry)
            if not versions.entries:
                del self.objects[entry.id]

    def compact(self) -> None:
        """Drop replaced entries from the order (memory); positions of the rest are unchanged."""
        if self.dead:
            self.entries = [e for e in self.entries if e.live]
            self.positions = [e.pos for e in self.entries]
            self.dead = 0

    # -- selection --

    def _selected(self, entry: Entry, filters: Filters, horizon_us: int) -> bool:
        if not entry.live:
            return False
        if filters.types and entry.type not in filters.types:
            return False
        if filters.ids and entry.id not in filters.ids:
            return False
        if filters.spec_versions and entry.spec_version not in filters.spec_versions:
            return False
        if filters.added_after_us is not None and entry.date_added_us <= filters.added_after_us:
            return False
        if "all" in filters.versions:
            return True
        versions = self.objects[entry.id].entries
        if len(versions) == 1 and ("last" in filters.versions or "first" in filters.versions):
            return True  # the one version is both (the common case: skip the sort)
        visible = [e for e in versions if e.date_added_us < horizon_us]
        by_version = sorted(visible, key=lambda e: e.version_us)
        if "last" in filters.versions and by_version and by_version[-1] is entry:
            return True
        if "first" in filters.versions and by_version and by_version[0] is entry:
            return True
        return any(
            v not in ("last", "first")
            and parse_timestamp_us(v, "match[version]") == entry.version_us
            for v in filters.versions
        )

    def page(
        self,
        filters: Filters,
        limit: int,
        horizon_us: int,
        after: Position | None = None,
        object_id: str | None = None,
    ) -> Page:
        """Up to `limit` matching entries after `after`, before the horizon, in order."""
        if object_id is not None:
            versions = self.objects.get(object_id)
            candidates = versions.entries if versions else []
            start = 0 if after is None else bisect.bisect_right([e.pos for e in candidates], after)
            scan: list[Entry] = candidates[start:]
        else:
            start = 0 if after is None else bisect.bisect_right(self.positions, after)
            if filters.added_after_us is not None:
                floor = (filters.added_after_us + 1, -1, -1)
                start = max(start, bisect.bisect_left(self.positions, floor))
            scan = self.entries
        chosen: list[Entry] = []
        following: Entry | None = None
        items = scan if object_id is not None else _from(scan, start)
        for entry in items:
            if entry.date_added_us >= horizon_us:
                break
            if not self._selected(entry, filters, horizon_us):
                continue
            if len(chosen) == limit:
                following = entry
                break
            chosen.append(entry)
        if following is not None and chosen[0].date_added_us != chosen[-1].date_added_us:
            # Never end a page inside a date_added the next record shares: a client resuming
            # from X-TAXII-Date-Added-Last (added_after) would skip the rest of it.
            cut = chosen[-1].date_added_us
            if following.date_added_us == cut:
                while chosen[-1].date_added_us == cut:
                    chosen.pop()
        return Page(chosen, more=following is not None)


def _from(entries: list[Entry], start: int) -> Any:
    for i in range(start, len(entries)):
        yield entries[i]


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    more: bool

    def header_times(self, filters: Filters, after: Position | None) -> tuple[str, str]:
        """X-TAXII-Date-Added-First/Last; on an empty page, the point the client stands at
        (its token's position, else its added_after, else the epoch), so echoing Last back as
        added_after neither skips nor repeats."""
        if self.entries:
            return taxii_time(self.entries[0].date_added_us), taxii_time(
                self.entries[-1].date_added_us
            )
        if after is not None:
            stand = after[0]
        elif filters.added_after_us is not None:
            stand = filters.added_after_us
        else:
            stand = 0
        return taxii_time(stand), taxii_time(stand)


# -- bodies -----------------------------------------------------------------------------------


def envelope_body(page: Page, next_token: str | None) -> bytes:
    """A TAXII envelope, the objects copied as the topic holds them (no re-serialising)."""
    head: dict[str, Any] = {"more": page.more}
    if next_token is not None:
        head["next"] = next_token
    if not page.entries:
        return orjson.dumps(head)
    start = orjson.dumps(head)[:-1] + b',"objects":['
    return start + b",".join(e.raw for e in page.entries) + b"]}"


def manifest_body(page: Page, next_token: str | None) -> bytes:
    body: dict[str, Any] = {"more": page.more}
    if next_token is not None:
        body["next"] = next_token
    if page.entries:
        body["objects"] = [
            {
                "id": e.id,
                "date_added": taxii_time(e.date_added_us),
                "version": e.version,
                "media_type": STIX_MEDIA,
            }
            for e in page.entries
        ]
    return orjson.dumps(body)


def versions_body(page: Page, next_token: str | None) -> bytes:
    body: dict[str, Any] = {"more": page.more}
    if next_token is not None:
        body["next"] = next_token
    if page.entries:
        body["versions"] = [e.version for e in page.entries]
    return orjson.dumps(body)


def error_body(status: int, title: str, description: str) -> bytes:
    return orjson.dumps({"title": title, "description": description, "http_status": str(status)})


def accept_ok(value: str) -> bool:
    """An Accept header a TAXII 2.1 server may answer (absent, */*, or TAXII 2.1)."""
    if not value.strip():
        return True
    for item in value.split(","):
        parts = [p.strip().lower() for p in item.split(";")]
        if parts[0] in ("*/*", "application/*"):
            return True
        if parts[0] == TAXII_MEDIA_BASE and (
            "version=2.1" in parts[1:] or not any(p.startswith("version=") for p in parts[1:])
        ):
            return True
    return False
