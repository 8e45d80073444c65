"""De-duplication state per canonical key (pure): every producer's latest version, kept apart.

The bus never merges producers into one object.  A key's state holds, per source object id, the
latest accepted version and when it was first and last seen, plus (see
stixbus/core/deliveries.py) what each subscriber was last given.  Semantics: docs/dedup.md.

The state is the route table's value, read and written once per event, so it is kept small:
plain slotted dataclasses, encoded by stixbus/core/state_codec.py.  For keys with a canonical
pattern (bus-minted indicators) a source keeps only the properties that agreement decisions and
minting read (`PLANNING_PROPERTIES`) plus a hash of the whole object; a subscriber's view keeps
the minted body it was given (shared between views with equal bodies), not the whole delivered
object.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from schemas.envelope import DeadLetter, NormalizedObject, Reason, Receipt, Rejection
from stixbus.core.decay import SINCE, DecayPolicy
from stixbus.core.ids import EPOCH, parse_time, stix_time

# What `stixbus.core.decide` (markings, label fields, confidence) and minting
# (`stixbus.core.minting`) read from a source object of a minted key.  Everything else
# (description, kill chains, external references, custom properties…) is covered by the
# content hash only.
PLANNING_PROPERTIES = (
    "type",
    "id",
    "created_by_ref",
    "modified",
    "revoked",
    "name",
    "valid_from",
    "valid_until",
    "confidence",
    "indicator_types",
    "labels",
    "object_marking_refs",
    "granular_markings",
)



@dataclass(slots=True)  # immutable by convention: frozen dataclasses cost 4x to build
class SourceVersion:
    record: NormalizedObject  # for minted keys `record.object` holds PLANNING_PROPERTIES only
    content_hash: str
    first_seen: datetime
    last_seen: datetime
    # Its row in the table encoding, kept from decoding: unchanged sources are not re-encoded.
    encoded: list[Any] | None = field(default=None, compare=False, repr=False)

    @property
    def revoked(self) -> bool:
        return bool(self.record.object.get("revoked", False))

    @property
    def valid_until(self) -> str | None:
        value = self.record.object.get("valid_until")
        return value if isinstance(value, str) else None

    def active(self, now: datetime) -> bool:
        """Still vouches for the indicator: not revoked and not past valid_until."""
        if self.record.object.get("revoked", False):
            return False
        until = self.valid_until
        return until is None or parse_time(until) > now

    def vouches_until(self) -> datetime | None:
        """Until when it vouches: None = open-ended, EPOCH = not at all (revoked)."""
        if self.revoked:
            return EPOCH
        until = self.valid_until
        return None if until is None else parse_time(until)


@dataclass(slots=True)  # immutable by convention: frozen dataclasses cost 4x to build
class SubscriberView:
    """What one subscriber was last given for this key.

    Minted keys: `created`, `modified`, `revoked` and `body` (every property of the minted
    indicator after `created_by_ref`: name, pattern, validity, markings, x_stixbus_sources…);
    the rest of the object is derived (`stixbus.core.minting.minted_object`).  Forwarded keys:
    `delivered`, the whole (redacted) object."""

    source_ids: tuple[str, ...]
    agreement_id: str | None = None
    agreement_version: int | None = None
    created: str | None = None
    modified: str | None = None
    revoked: bool = False
    body: dict[str, Any] | None = None
    delivered: dict[str, Any] | None = None

    @staticmethod
    def forwarded(
        delivered: dict[str, Any],
        source_ids: tuple[str, ...],
        agreement_id: str | None,
        agreement_version: int | None,
    ) -> SubscriberView:
        modified = delivered.get("modified")
        return SubscriberView(
            source_ids=source_ids,
            agreement_id=agreement_id,
            agreement_version=agreement_version,
            created=delivered.get("created") if isinstance(delivered.get("created"), str) else None,
            modified=modified if isinstance(modified, str) else None,
            revoked=bool(delivered.get("revoked", False)),
            delivered=delivered,
        )


@dataclass(slots=True)  # immutable by convention: frozen dataclasses cost 4x to build
class KeyState:
    key: str
    canonical_pattern: str | None = None
    sources: dict[str, SourceVersion] = field(default_factory=dict)
    views: dict[str, SubscriberView] = field(default_factory=dict)
    # When no source vouched and every view was final (for GC).
    settled_at: datetime | None = None

    @property
    def minted(self) -> bool:
        """Indicators with a canonical pattern get one bus-minted object per subscriber."""
        return self.canonical_pattern is not None

    def revocation_due_at(self) -> datetime | None:
        """The earliest moment some live minted view has no source left that vouches (then it
        needs a revoked version).  None: never by expiry alone."""
        return self._due()[0]

    def settling_due_at(self) -> datetime | None:
        """When the key becomes settled (no source vouches, all views revoked) if it is not yet:
        a tick then records `settled_at` so GC can start.  None: not by expiry alone."""
        return self._due()[1]

    def expiry_deadline(self) -> datetime | None:
        """Earliest moment a timer tick is needed, grace period for GC excluded."""
        revocation, settling = self._due()
        if revocation is None:
            return settling
        return revocation if settling is None or revocation < settling else settling

    def _due(self) -> tuple[datetime | None, datetime | None]:
        ends = {sid: src.vouches_until() for sid, src in self.sources.items()}
        revocation: datetime | None = None
        live = False
        minted = self.canonical_pattern is not None
        checked: set[tuple[tuple[str, ...], object]] = set()
        for view in self.views.values():
            if view.revoked:
                continue
            live = True
            if not minted:
                # forwarded objects carry their own validity; their revocations are events
                continue
            # An agreement's max_age caps the body's valid_until below its sources' (decay.py).
            body_until = view.body.get("valid_until") if view.body is not None else None
            seen = (view.source_ids, body_until)
            if seen in checked:
                continue
            checked.add(seen)
            end = _latest(ends, view.source_ids)
            if isinstance(body_until, str):
                cap = parse_time(body_until)
                if end is None or cap < end:
                    end = cap
            if end is not None and (revocation is None or end < revocation):
                revocation = end
        settling = None
        if self.settled_at is None and not live:
            settling = _latest(ends, tuple(ends))
        return revocation, settling


def _latest(ends: dict[str, datetime | None], source_ids: tuple[str, ...]) -> datetime | None:
    """When the last of these sources stops vouching (None: one never does)."""
    latest = EPOCH
    for sid in source_ids:
        if sid not in ends:
            continue
        end = ends[sid]
        if end is None:
            return None
        if end > latest:
            latest = end
    return latest


class MergeOutcome(StrEnum):
    NEW_SOURCE = "new_source"
    NEW_VERSION = "new_version"
    IDENTICAL = "identical"  # re-submission of a version already held: nothing to do
    STALE = "stale"  # older than the version held
    AFTER_REVOCATION = "after_revocation"  # revoked is final
    CONFLICT = "conflict"  # same (id, modified), different content: quarantine


def content_hash(stix_object: dict[str, Any]) -> str:
    """128 bits of SHA-256 over the canonical JSON: tells a re-submission from a conflict."""
    return hashlib.sha256(orjson.dumps(stix_object, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def merge_source(
    state: KeyState | None,
    record: NormalizedObject,
    now: datetime,
    decay: DecayPolicy | None = None,
) -> tuple[KeyState, MergeOutcome]:
    """Fold one accepted object version into its key's state.

    `decay`: a minted key's source without `valid_until` gets the policy's default one
    (stixbus/core/decay.py) in its planning record, so expiry revokes it like any other."""
    if state is None:
        state = KeyState(key=record.key, canonical_pattern=record.canonical_pattern)
    digest = content_hash(record.object)
    held = state.sources.get(record.object_id)
    if held is not None:
        outcome = _compare(held, record, digest)
        if outcome is MergeOutcome.IDENTICAL:
            # Nothing to deliver, but the producer still vouches: remember when it last said so.
            seen = SourceVersion(
                held.record, held.content_hash, held.first_seen, max(held.last_seen, now)
            )
            sources = {**state.sources, record.object_id: seen}
            return KeyState(
                state.key, state.canonical_pattern, sources, state.views, state.settled_at
            ), outcome
        if outcome is not None:
            return state, outcome
    if state.minted:
        since = held.record.object.get(SINCE) if held is not None else None
        kept = planning_record(record, decay, since if isinstance(since, str) else None)
    else:
        kept = record
    version = SourceVersion(kept, digest, held.first_seen if held else now, now)
    sources = {**state.sources, record.object_id: version}
    updated = KeyState(state.key, state.canonical_pattern, sources, state.views, None)
    return updated, MergeOutcome.NEW_VERSION if held else MergeOutcome.NEW_SOURCE


def with_views(
    state: KeyState, views: dict[str, SubscriberView], settled_at: datetime | None
) -> KeyState:
    return KeyState(state.key, state.canonical_pattern, state.sources, views, settled_at)


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


# --- records without validation ------------------------------------------------------------

_RECORD_FIELDS = tuple(NormalizedObject.model_fields)


def unchecked_record(values: dict[str, Any]) -> NormalizedObject:
    """A NormalizedObject from already-validated values, without pydantic's (slow) machinery.

    Equivalent to `NormalizedObject.model_construct(**values)` with every field given (checked
    by tests/unit/test_dedup_core.py), at a fraction of the cost: the route agent builds one per
    held source on every event."""
    rec = NormalizedObject.__new__(NormalizedObject)
    object.__setattr__(rec, "__dict__", values)
    object.__setattr__(rec, "__pydantic_fields_set__", set(_RECORD_FIELDS))
    object.__setattr__(rec, "__pydantic_extra__", None)
    object.__setattr__(rec, "__pydantic_private__", None)
    return rec


def planning_record(
    record: NormalizedObject, decay: DecayPolicy | None = None, since: str | None = None
) -> NormalizedObject:
    """`record` with its object cut down to PLANNING_PROPERTIES (what a minted key needs).

    With a decay policy (stixbus/core/decay.py) it also records SINCE, when the bus accepted
    the source's first version (`since`, carried over from the version held, or this record's
    Kafka time), and gives a source without `valid_until` the policy's default one."""
    obj = record.object
    slim = {name: obj[name] for name in PLANNING_PROPERTIES if name in obj}
    if decay is not None:
        if since is None:
            since = stix_time(record.published_at)
        slim[SINCE] = since
        if "valid_until" not in slim and not slim.get("revoked"):
            until = decay.default_until(
                record.observable_types, slim.get("valid_from"), parse_time(since)
            )
            if until is not None:
                slim["valid_until"] = until
    values = dict(record.__dict__)
    values["object"] = slim
    return unchecked_record(values)


def conflict_outcome(record: NormalizedObject) -> tuple[Receipt, DeadLetter]:
    """The receipt update and the quarantine record for a version conflict: the same
    (id, modified) already accepted with different content is never routed."""
    rejection = Rejection(
        object_id=record.object_id,
        reason=Reason.VERSION_CONFLICT,
        message=(
            f"{record.object_id} version {record.modified} was already accepted with different "
            "content; publish a new version with a later `modified` instead of rewriting one"
        ),
    )
    receipt = Receipt(
        submission_id=record.submission_id,
        publisher=record.publisher,
        received_at=record.received_at,
        accepted=0,
        rejected=1,
        rejections=[rejection],
    )
    return receipt, object_letter(record, rejection, "quarantine")


def object_letter(record: NormalizedObject, rejection: Rejection, source: str) -> DeadLetter:
    """The dead letter of one accepted object that a later stage (`source`) refused."""
    return DeadLetter(
        submission_id=record.submission_id,
        publisher=record.publisher,
        received_at=record.received_at,
        reasons=[rejection],
        payload=orjson.dumps(record.object).decode(),
        source_topic=source,
    )
