"""De-duplication state per canonical key (pure): every producer's latest version, kept apart.

The bus never merges producers into one object.  A key's state holds, per source object id, the
latest accepted version and when it was first and last seen, plus (see stixbus/deliveries.py) what
each subscriber was last given.  Semantics: docs/dedup.md.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import NormalizedObject


class SourceVersion(BaseModel):
    model_config = ConfigDict(frozen=True)

    record: NormalizedObject
    content_hash: str
    first_seen: datetime
    last_seen: datetime

    @property
    def revoked(self) -> bool:
        return bool(self.record.object.get("revoked", False))

    @property
    def valid_until(self) -> str | None:
        value = self.record.object.get("valid_until")
        return value if isinstance(value, str) else None

    def active(self, now: datetime) -> bool:
        """Still vouches for the indicator: not revoked and not past valid_until."""
        if self.revoked:
            return False
        until = self.valid_until
        return until is None or parse_time(until) > now


class SubscriberView(BaseModel):
    """What one subscriber was last given for this key."""

    model_config = ConfigDict(frozen=True)

    delivered: dict[str, Any] = Field(description="The last object delivered (bus-minted/redacted)")
    source_ids: tuple[str, ...] = Field(description="Sources it was built from")
    agreement_id: str | None = None
    agreement_version: int | None = None

    @property
    def revoked(self) -> bool:
        return bool(self.delivered.get("revoked", False))


class KeyState(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    canonical_pattern: str | None = None
    sources: dict[str, SourceVersion] = Field(default_factory=dict)
    views: dict[str, SubscriberView] = Field(default_factory=dict)
    settled_at: datetime | None = Field(
        default=None, description="When no source vouched and every view was final (for GC)"
    )

    @property
    def minted(self) -> bool:
        """Indicators with a canonical pattern get one bus-minted object per subscriber."""
        return self.canonical_pattern is not None


class MergeOutcome(StrEnum):
    NEW_SOURCE = "new_source"
    NEW_VERSION = "new_version"
    IDENTICAL = "identical"  # re-submission of a version already held: nothing to do
    STALE = "stale"  # older than the version held
    AFTER_REVOCATION = "after_revocation"  # revoked is final
    CONFLICT = "conflict"  # same (id, modified), different content: quarantine


def content_hash(stix_object: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(stix_object, option=orjson.OPT_SORT_KEYS)).hexdigest()


@lru_cache(maxsize=65536)
def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def merge_source(
    state: KeyState | None, record: NormalizedObject, now: datetime
) -> tuple[KeyState, MergeOutcome]:
    """Fold one accepted object version into its key's state."""
    state = state or KeyState(key=record.key, canonical_pattern=record.canonical_pattern)
    digest = content_hash(record.object)
    held = state.sources.get(record.object_id)
    if held is not None:
        outcome = _compare(held, record, digest)
        if outcome is MergeOutcome.IDENTICAL:
            # Nothing to deliver, but the producer still vouches: remember when it last said so.
            seen = held.model_copy(update={"last_seen": max(held.last_seen, now)})
            sources = {**state.sources, record.object_id: seen}
            return state.model_copy(update={"sources": sources}), outcome
        if outcome is not None:
            return state, outcome
    version = SourceVersion(
        record=record,
        content_hash=digest,
        first_seen=held.first_seen if held else now,
        last_seen=now,
    )
    sources = {**state.sources, record.object_id: version}
    updated = state.model_copy(update={"sources": sources, "settled_at": None})
    return updated, MergeOutcome.NEW_VERSION if held else MergeOutcome.NEW_SOURCE


def _compare(held: SourceVersion, record: NormalizedObject, digest: str) -> MergeOutcome | None:
    """None when `record` supersedes `held`, else why it does not."""
    held_modified = parse_time(held.record.modified) if held.record.modified else None
    new_modified = parse_time(record.modified) if record.modified else None
    if held_modified == new_modified:
        return MergeOutcome.IDENTICAL if held.content_hash == digest else MergeOutcome.CONFLICT
    if held.revoked:
        return MergeOutcome.AFTER_REVOCATION
    if held_modified and new_modified and new_modified < held_modified:
        return MergeOutcome.STALE
    return None
