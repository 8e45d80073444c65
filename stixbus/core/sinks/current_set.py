"""A subscriber's current set: the latest version of every delivered indicator, and what a
block list can hold of it (pure).

The sinks (egress/sinks/) read one subscriber's delivery topic from the beginning and `apply`
every object here.  The latest version per STIX id wins (by `modified`); a revocation is final
(STIX 2.1 §3.6: a revoked object is never un-revoked, so a later or replayed older version does
not bring it back).  An indicator is *active* when it is not revoked, `valid_from` has come
and `valid_until` has not passed.

Observables come out of the pattern with the bus's own canonicaliser (stixbus/core/pattern.py
over stixbus/core/canonical.py, the one dedup uses), so a list holds exactly what dedup
counted as one indicator.  Each OR-term of the observation gives entries: a single comparison
on a listable observable (domain, URL, IPv4/IPv6 address or CIDR, MD5/SHA-1/SHA-256 of a file)
gives that entry; an AND of file hashes gives each hash (they name one file); any other AND
(e.g. a URL *and* an IP) cannot be one list line and is left out, as are patterns outside the
fast subset (qualifiers, several observations): a list must never block more than the
indicator says.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from schemas.tlp import TLP, tlp_of_marking
from stixbus.core.ids import parse_time
from stixbus.core.pattern import Comparison, PatternError, pattern_terms


class Kind(StrEnum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    DOMAIN = "domain"
    URL = "url"
    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"


_KIND_OF: dict[tuple[str, str], Kind] = {
    ("ipv4-addr", "value"): Kind.IPV4,
    ("ipv6-addr", "value"): Kind.IPV6,
    ("domain-name", "value"): Kind.DOMAIN,
    ("url", "value"): Kind.URL,
    ("file", "hashes.MD5"): Kind.MD5,
    ("file", "hashes.SHA-1"): Kind.SHA1,
    ("file", "hashes.SHA-256"): Kind.SHA256,
}


@dataclass(frozen=True, slots=True)
class Entry:
    kind: Kind
    value: str  # canonical (stixbus/core/canonical.py)


@dataclass(frozen=True, slots=True)
class Listed:
    """The latest known version of one indicator, reduced to what the sinks render."""

    id: str
    modified: datetime
    created: datetime
    revoked: bool
    valid_from: datetime | None
    valid_until: datetime | None
    entries: tuple[Entry, ...]
    tlp: TLP | None
    labels: tuple[str, ...]
    name: str
    source: str  # created_by_ref, or "" (the bus mints some indicators itself)

    def active(self, now: datetime) -> bool:
        if self.revoked:
            return False
        if self.valid_from is not None and now < self.valid_from:
            return False
        return self.valid_until is None or now < self.valid_until


def entries_of(pattern: str, pattern_version: str = "2.1") -> tuple[Entry, ...]:
    """What a block list can hold of a STIX pattern (module docstring); () when nothing."""
    try:
        terms = pattern_terms(pattern, pattern_version)
    except PatternError:
        return ()
    found: dict[Entry, None] = {}
    for term in terms:
        if len(term) == 1 or all(_is_file_hash(c) for c in term):
            for comparison in term:
                kind = _KIND_OF.get((comparison.object_type, comparison.path))
                if kind is not None:
                    found[Entry(kind, comparison.value)] = None
    return tuple(found)


def _is_file_hash(comparison: Comparison) -> bool:
    return comparison.object_type == "file" and comparison.path.startswith("hashes.")


def _time_or_none(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


class CurrentSet:
    """The reducer: `apply` each delivered object in topic order; read `active`/`removed`.

    Holds no I/O; the shell owns one per subscriber.  `version` increases whenever the set of
    versions changes, so a shell can tell cheaply whether to re-render."""

    def __init__(self) -> None:
        self._by_id: dict[str, Listed] = {}
        self._marking_tlp: dict[str, TLP] = {}
        self.version = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def apply(self, obj: Mapping[str, Any]) -> bool:
        """Fold one delivered object in; True when the current set changed."""
        object_type = obj.get("type")
        if object_type == "marking-definition":
            self._learn_marking(obj)
            return False
        if object_type != "indicator" or not isinstance(obj.get("id"), str):
            return False
        modified = _time_or_none(obj.get("modified")) or _time_or_none(obj.get("created"))
        if modified is None:
            return False
        object_id: str = obj["id"]
        previous = self._by_id.get(object_id)
        revoked = obj.get("revoked") is True
        if previous is not None:
            if previous.revoked:
                return False  # final
            if modified < previous.modified or (modified == previous.modified and not revoked):
                return False  # an older or the same version (a redelivery)
        listed = self._reduce(obj, object_id, modified, revoked)
        self._by_id[object_id] = listed
        self.version += 1
        return True

    def forget(self, object_id: str) -> bool:
        """A tombstone on the (compacted) delivery topic: the object is gone for good."""
        if self._by_id.pop(object_id, None) is None:
            return False
        self.version += 1
        return True

    def apply_all(self, objects: Iterable[Mapping[str, Any]]) -> bool:
        changed = False
        for obj in objects:
            changed = self.apply(obj) or changed
        return changed

    def active(self, now: datetime) -> Iterator[Listed]:
        """Active indicators with at least one entry, in id order (renders are reproducible)."""
        for object_id in sorted(self._by_id):
            listed = self._by_id[object_id]
            if listed.entries and listed.active(now):
                yield listed

    def removed(self, now: datetime) -> Iterator[Listed]:
        """Revoked or expired indicators that had entries (MISP marks them deleted)."""
        for object_id in sorted(self._by_id):
            listed = self._by_id[object_id]
            if listed.entries and not listed.active(now) and not _not_yet_valid(listed, now):
                yield listed

    def next_change(self, now: datetime) -> datetime | None:
        """The next moment an indicator becomes valid or expires (the shell's timer), or None."""
        upcoming = [
            moment
            for listed in self._by_id.values()
            if listed.entries and not listed.revoked
            for moment in (listed.valid_from, listed.valid_until)
            if moment is not None and moment > now
        ]
        return min(upcoming, default=None)

    def _learn_marking(self, obj: Mapping[str, Any]) -> None:
        marking_id = obj.get("id")
        if not isinstance(marking_id, str):
            return
        known = tlp_of_marking(marking_id)
        name = obj.get("name")
        if known is None and obj.get("definition_type") == "tlp":
            definition = obj.get("definition")
            name = definition.get("tlp") if isinstance(definition, dict) else name
        if known is None and isinstance(name, str):
            try:
                known = TLP.parse(name)
            except ValueError:
                known = None
        if known is not None:
            self._marking_tlp[marking_id] = known

    def _tlp(self, refs: object) -> TLP | None:
        if not isinstance(refs, list):
            return None
        levels = [
            level
            for ref in refs
            if isinstance(ref, str)
            and (level := tlp_of_marking(ref) or self._marking_tlp.get(ref)) is not None
        ]
        return max(levels, default=None)

    def _reduce(
        self, obj: Mapping[str, Any], object_id: str, modified: datetime, revoked: bool
    ) -> Listed:
        pattern = obj.get("pattern")
        version = obj.get("pattern_version")
        entries = (
            entries_of(pattern, version if isinstance(version, str) else "2.1")
            if isinstance(pattern, str) and obj.get("pattern_type", "stix") == "stix"
            else ()
        )
        labels = obj.get("labels")
        return Listed(
            id=object_id,
            modified=modified,
            created=_time_or_none(obj.get("created")) or modified,
            revoked=revoked,
            valid_from=_time_or_none(obj.get("valid_from")),
            valid_until=_time_or_none(obj.get("valid_until")),
            entries=entries,
            tlp=self._tlp(obj.get("object_marking_refs")),
            labels=tuple(str(label) for label in labels) if isinstance(labels, list) else (),
            name=str(obj.get("name") or ""),
            source=str(obj.get("created_by_ref") or ""),
        )


def _not_yet_valid(listed: Listed, now: datetime) -> bool:
    return not listed.revoked and listed.valid_from is not None and now < listed.valid_from


def by_kind(listed: Iterable[Listed]) -> dict[Kind, list[str]]:
    """Sorted, de-duplicated entry values per kind."""
    values: dict[Kind, set[str]] = {kind: set() for kind in Kind}
    for item in listed:
        for entry in item.entries:
            values[entry.kind].add(entry.value)
    return {kind: sorted(found) for kind, found in values.items()}
