"""Who owns a STIX id, and what a new version of it may do (pure).

STIX makes the creator of an object the only one who may version it (`created_by_ref` never
changes).  The bus cannot trust `created_by_ref` alone: any member can copy an id it was given
and publish "its" version.  So the first org to publish an id owns it, durably (the ownership
table, keyed and partitioned by STIX id: agents/ownership.py), and `claim` decides each later
version:

| who, what                                       | verdict    | effect                          |
|-------------------------------------------------|------------|---------------------------------|
| nobody owns the id yet                          | `OWNED`    | publisher becomes owner, routed |
| the owner, later `modified`                     | `OWNED`    | routed                          |
| the owner, same `(id, modified)`, same content  | `OWNED`    | routed (dedup drops it)         |
| the owner, same `(id, modified)`, other content | `CONFLICT` | quarantined, owner told         |
| the owner, earlier `modified`                   | `OWNED`    | routed (dedup ignores it)       |
| another org, same content as the owner's latest | `ECHO`     | dropped quietly (a relay echo)  |
| another org, anything else                      | `FOREIGN`  | dropped, dead letter, metric    |
| an id the bus mints                             | `FOREIGN`  | dropped (owner: the bus)        |

A `FOREIGN` version never replaces, revokes or suppresses the owner's, and its publisher's
receipt is not changed (it said "accepted" at ingest, as for any valid object): a receipt that
said "someone else holds this id" would tell a member which ids other members publish.
Operators see every foreign attempt (dead letter `foreign_id`, `stixbus_foreign_ids_total`).
Design and limits: docs/dedup.md → "Object ownership".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import orjson

from schemas.envelope import DeadLetter, NormalizedObject, Reason, Receipt, Rejection
from schemas.org import Registry
from stixbus.core.dedup import conflict_outcome, content_hash, object_letter
from stixbus.core.minting import minted_id

BUS_OWNER = "@bus"


class Verdict(StrEnum):
    OWNED = "owned"
    CONFLICT = "conflict"
    ECHO = "echo"
    FOREIGN = "foreign"


@dataclass(frozen=True, slots=True)
class Ownership:
    """The table value for one STIX id: its owner and the owner's latest version."""

    owner: str
    modified: str | None
    digest: str

    def encode(self) -> bytes:
        return orjson.dumps([self.owner, self.modified, self.digest])

    @classmethod
    def decode(cls, raw: bytes) -> Ownership:
        owner, modified, digest = orjson.loads(raw)
        return cls(owner, modified, digest)


def claim(
    held: Ownership | None, record: NormalizedObject, digest: str, bus_minted: bool
) -> tuple[Ownership | None, Verdict]:
    """The new table value (None: unchanged) and the verdict for `record`, whose canonical
    content hash is `digest`.  `bus_minted`: the id is one the bus itself mints."""
    if bus_minted:
        return None, Verdict.FOREIGN
    if held is None:
        return Ownership(record.publisher, record.modified, digest), Verdict.OWNED
    if held.owner != record.publisher:
        same = held.modified == record.modified and held.digest == digest
        return None, Verdict.ECHO if same else Verdict.FOREIGN
    if record.modified == held.modified:
        return None, Verdict.OWNED if digest == held.digest else Verdict.CONFLICT
    if _later(record.modified, held.modified):
        return Ownership(held.owner, record.modified, digest), Verdict.OWNED
    return None, Verdict.OWNED


def _later(modified: str | None, than: str | None) -> bool:
    # STIX timestamps are RFC 3339 UTC with "Z"; normalise made them comparable as text
    # (same precision rules are not guaranteed, so compare instants through a fixed width).
    if modified is None or than is None:
        return False
    return _instant(modified) > _instant(than)


def _instant(stamp: str) -> str:
    body = stamp.rstrip("Z")
    date_time, _, fraction = body.partition(".")
    return f"{date_time}.{fraction.ljust(9, '0')}"


def minted_ids(registry: Registry, dedup_key: str | None) -> frozenset[str]:
    """The indicator ids the bus mints for `dedup_key`, one per subscriber: a member that
    re-publishes the indicator it was given (same pattern, so same key) cannot claim its id."""
    if dedup_key is None:
        return frozenset()
    return frozenset(minted_id(registry, dedup_key, s.id) for s in registry.subscribers)


def foreign_letter(record: NormalizedObject) -> DeadLetter:
    """The operators' record of a dropped foreign version (publishers never see it)."""
    rejection = Rejection(
        object_id=record.object_id,
        reason=Reason.FOREIGN_ID,
        message=(
            f"{record.object_id} is owned by another publisher (or minted by the bus); "
            f"{record.publisher} may not version it: publish your own object with a new id"
        ),
    )
    return object_letter(record, rejection, "ownership")


def is_bus_minted(registry: Registry, object_id: str, dedup_key: str | None) -> bool:
    """Whether `object_id` is an indicator id the bus mints for `dedup_key`.  Minted ids are
    UUIDv5: any other version (publishers' ids are mostly v4) is answered without hashing."""
    uuid_part = object_id.partition("--")[2]
    if dedup_key is None or len(uuid_part) != 36 or uuid_part[14] != "5":
        return False
    return object_id in minted_ids(registry, dedup_key)


@dataclass(frozen=True, slots=True)
class ClaimStep:
    """What the ownership agent writes for one record."""

    update: Ownership | None  # the new table value, None: unchanged
    forward: bool  # send the record on to dedup and routing
    dead_letter: DeadLetter | None = None
    receipt: Receipt | None = None  # only ever to the id's owner
    foreign: bool = False


def claim_step(held_raw: bytes | None, record: NormalizedObject, registry: Registry) -> ClaimStep:
    """Decode the table value, decide `record` (`claim`) and say what to write."""
    held = Ownership.decode(held_raw) if held_raw else None
    minted = is_bus_minted(registry, record.object_id, record.dedup_key)
    update, verdict = claim(held, record, content_hash(record.object), minted)
    if verdict is Verdict.OWNED:
        return ClaimStep(update, forward=True)
    if verdict is Verdict.CONFLICT:
        receipt, letter = conflict_outcome(record)
        return ClaimStep(update, forward=False, dead_letter=letter, receipt=receipt)
    if verdict is Verdict.FOREIGN:
        return ClaimStep(update, forward=False, dead_letter=foreign_letter(record), foreign=True)
    return ClaimStep(update, forward=False)  # an echo of the owner's version
