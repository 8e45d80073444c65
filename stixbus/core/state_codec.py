"""The route table's value encoding of a `KeyState` (pure): compact orjson with a schema version.

`encode_state` / `decode_state` are read and written once per event, so they avoid pydantic;
`deadline_header` reads the tick deadline from a prefix of an encoded value, without decoding it
(the expiry index is rebuilt that way after a rebalance).  Semantics of the state itself:
stixbus/core/dedup.py and docs/dedup.md.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import orjson

from schemas.envelope import NormalizedObject
from schemas.tlp import TLP
from stixbus.core.dedup import (
    KeyState,
    SourceVersion,
    SubscriberView,
    parse_time,
    planning_record,
    unchecked_record,
)
from stixbus.core.ids import epoch_us, from_epoch_us

SCHEMA_VERSION = 2


#
# {"v":2,"d":<tick deadline µs|null>,"s":<settled_at µs|null>,"k":key,"p":canonical pattern,
#  "src":[[id, hash, first_seen µs, last_seen µs, publisher, published_at µs, submission id,
#          received_at µs, object_type, modified, tlp, tlp_inherited, dedup_key (1: the key),
#          observable_types, canonical_sco_id, object (minted: without type/id/modified)], ...],
#  "b":[minted body, ...],
#  "vw":{subscriber: [source indexes, agreement id, agreement version, created, modified,
#                     revoked, body index (-1: none), delivered object (forwarded) or null]}}
#
# "v", "d" and "s" come first so that the expiry index can be rebuilt from a prefix of each
# value (`deadline_header`) without decoding whole states.


def encode_state(state: KeyState) -> bytes:
    sources, minted = state.sources, state.minted
    index = {sid: n for n, sid in enumerate(sources)}
    encoded_sources = []
    for sid, src in sources.items():
        row = src.encoded
        if row is None:
            row = src.encoded = _encode_source(sid, src, minted, state.key)
        encoded_sources.append(row)
    bodies: list[dict[str, Any]] = []
    # id(body) -> position: views minted in one plan, or decoded together, share body objects
    body_index: dict[int, int] = {}
    encoded_views = {}
    positions: dict[tuple[str, ...], list[int]] = {}
    for subscriber, view in state.views.items():
        at = positions.get(view.source_ids)
        if at is None:
            at = positions[view.source_ids] = [index[s] for s in view.source_ids if s in index]
        b = -1
        if view.body is not None:
            found = body_index.get(id(view.body))
            if found is None:
                found = body_index[id(view.body)] = len(bodies)
                bodies.append(view.body)
            b = found
        encoded_views[subscriber] = [
            at,
            view.agreement_id,
            view.agreement_version,
            view.created,
            view.modified,
            1 if view.revoked else 0,
            b,
            view.delivered,
        ]
    deadline = state.expiry_deadline()
    return orjson.dumps(
        {
            "v": SCHEMA_VERSION,
            "d": None if deadline is None else epoch_us(deadline),
            "s": None if state.settled_at is None else epoch_us(state.settled_at),
            "k": state.key,
            "p": state.canonical_pattern,
            "src": encoded_sources,
            "b": bodies,
            "vw": encoded_views,
        }
    )


_IN_ROW = frozenset({"type", "id", "modified"})


def _encode_source(sid: str, src: SourceVersion, minted: bool, key: str) -> list[Any]:
    rec = src.record
    obj = rec.object
    if minted:  # type, id and modified are stored elsewhere in the row
        obj = {k: v for k, v in obj.items() if k not in _IN_ROW}
    return [
        sid,
        src.content_hash,
        epoch_us(src.first_seen),
        epoch_us(src.last_seen),
        rec.publisher,
        epoch_us(rec.published_at),
        rec.submission_id,
        epoch_us(rec.received_at),
        rec.object_type,
        rec.modified,
        int(rec.tlp),
        rec.tlp_inherited,
        1 if rec.dedup_key == key else rec.dedup_key,  # 1: the key itself
        rec.observable_types,
        rec.canonical_sco_id,
        obj,
    ]


def decode_state(raw: bytes) -> KeyState:
    data = orjson.loads(raw)
    if data.get("v") != SCHEMA_VERSION:
        return _decode_v1(data)
    key, pattern = data["k"], data["p"]
    sources: dict[str, SourceVersion] = {}
    order: list[str] = []
    for row in data["src"]:
        (sid, digest, first, last, publisher, published, submission, received, object_type,
         modified, tlp, inherited, dedup_key, observables, sco_id, obj) = row  # fmt: skip
        if pattern is not None:  # see _encode_source
            stix = {"type": object_type, "id": sid, **obj}
            if modified is not None:
                stix["modified"] = modified
        else:
            stix = obj
        rec = unchecked_record(
            {
                "submission_id": submission,
                "publisher": publisher,
                "received_at": from_epoch_us(received),
                "published_at": from_epoch_us(published),
                "object_id": sid,
                "object_type": object_type,
                "modified": modified,
                "tlp": TLP(tlp),
                "tlp_inherited": inherited,
                "dedup_key": key if dedup_key == 1 else dedup_key,
                "canonical_pattern": pattern,
                "observable_types": observables,
                "canonical_sco_id": sco_id,
                "object": stix,
            }
        )
        sources[sid] = SourceVersion(rec, digest, from_epoch_us(first), from_epoch_us(last), row)
        order.append(sid)
    bodies = data["b"]
    views = {}
    for subscriber, view in data["vw"].items():
        idx, agreement_id, agreement_version, created, modified, revoked, b, delivered = view
        views[subscriber] = SubscriberView(
            tuple([order[n] for n in idx]),
            agreement_id,
            agreement_version,
            created,
            modified,
            bool(revoked),
            bodies[b] if b >= 0 else None,
            delivered,
        )
    settled = data["s"]
    return KeyState(
        key, pattern, sources, views, None if settled is None else from_epoch_us(settled)
    )


_HEADER = re.compile(rb'\{"v":(\d+),"d":(-?\d+|null),"s":(-?\d+|null),')


def deadline_header(raw: bytes) -> tuple[datetime | None, datetime | None] | None:
    """(tick deadline without grace, settled_at) read from the start of an encoded state, or
    None when `raw` is not in the current encoding (then decode it)."""
    match = _HEADER.match(raw)
    if match is None or int(match[1]) != SCHEMA_VERSION:
        return None
    d, s = match[2], match[3]
    return (
        None if d == b"null" else from_epoch_us(int(d)),
        None if s == b"null" else from_epoch_us(int(s)),
    )


# Minted body properties: everything of a minted indicator after `created_by_ref`.
_HEADER_PROPERTIES = frozenset(
    {"type", "spec_version", "id", "created", "modified", "created_by_ref", "revoked"}
)


def _decode_v1(data: dict[str, Any]) -> KeyState:
    """The first encoding (pydantic `model_dump_json` of whole records and delivered objects):
    tables written before schema 2 keep working; the next write stores the new encoding."""
    pattern = data.get("canonical_pattern")
    minted = pattern is not None
    sources: dict[str, SourceVersion] = {}
    for sid, src in (data.get("sources") or {}).items():
        rec = NormalizedObject.model_validate(src["record"])
        sources[sid] = SourceVersion(
            planning_record(rec) if minted else rec,
            str(src["content_hash"])[:32],
            parse_time(src["first_seen"]),
            parse_time(src["last_seen"]),
        )
    views = {}
    for subscriber, view in (data.get("views") or {}).items():
        delivered = view["delivered"]
        source_ids = tuple(view.get("source_ids") or ())
        if minted:
            views[subscriber] = SubscriberView(
                source_ids=source_ids,
                agreement_id=view.get("agreement_id"),
                agreement_version=view.get("agreement_version"),
                created=delivered.get("created"),
                modified=delivered.get("modified"),
                revoked=bool(delivered.get("revoked", False)),
                body={k: v for k, v in delivered.items() if k not in _HEADER_PROPERTIES},
            )
        else:
            views[subscriber] = SubscriberView.forwarded(
                delivered, source_ids, view.get("agreement_id"), view.get("agreement_version")
            )
    settled = data.get("settled_at")
    return KeyState(
        data["key"], pattern, sources, views, None if settled is None else parse_time(settled)
    )
