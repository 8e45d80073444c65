"""A MISP feed of one subscriber (pure): `misp/manifest.json` plus one event file per day
(`misp/<event uuid>.json`), the layout MISP's "Feeds" pull (Sync Actions > Feeds, format
"MISP Feed") reads.

- One event per UTC day of the indicators' `created`; its uuid is derived from the subscriber
  and the day, so it is stable across renders and MISP updates it in place.
- One attribute per entry (ip-dst, domain, url, md5, sha1, sha256), `to_ids` set, its uuid
  derived from the indicator id and the entry.
- Tags from TLP (`tlp:green`, ...: the MISP tlp taxonomy) and the indicator's labels; the
  event carries the highest TLP of its attributes.
- Deletion on revocation or expiry: the attribute stays in its event with `"deleted": true`
  and `to_ids` false and the event timestamp moves on, so a MISP that pulled it before soft-
  deletes it on its next pull.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson

from schemas.sinks import SubscriberSinks
from schemas.tlp import TLP
from stixbus.core.sinks import Rendered, SinkView
from stixbus.core.sinks.current_set import Kind, Listed

FEED_NAMESPACE = uuid.UUID("5d1c7f2e-3a0b-4e47-9a55-7e0c2b7f1d10")

_ATTRIBUTE = {
    Kind.IPV4: ("ip-dst", "Network activity"),
    Kind.IPV6: ("ip-dst", "Network activity"),
    Kind.DOMAIN: ("domain", "Network activity"),
    Kind.URL: ("url", "Network activity"),
    Kind.MD5: ("md5", "Payload delivery"),
    Kind.SHA1: ("sha1", "Payload delivery"),
    Kind.SHA256: ("sha256", "Payload delivery"),
}
_TLP_TAG = {
    TLP.CLEAR: "tlp:clear",
    TLP.GREEN: "tlp:green",
    TLP.AMBER: "tlp:amber",
    TLP.AMBER_STRICT: "tlp:amber+strict",
    TLP.RED: "tlp:red",
}


@lru_cache(maxsize=4096)
def _stamp(moment: datetime) -> str:
    return str(int(moment.timestamp()))


@lru_cache(maxsize=4096)
def _tags(tlp: TLP | None, labels: tuple[str, ...]) -> list[dict[str, str]]:
    """Shared between attributes with the same TLP and labels (serialised, never mutated)."""
    names = ([_TLP_TAG[tlp]] if tlp is not None else []) + [label for label in labels if label]
    return [{"name": name} for name in dict.fromkeys(names)]


def _attributes(listed: Listed, deleted: bool) -> list[dict[str, Any]]:
    changed = listed.modified
    if deleted and not listed.revoked and listed.valid_until is not None:
        changed = max(changed, listed.valid_until)  # expired: the change is the expiry
    return [
        {
            "uuid": str(
                uuid.uuid5(FEED_NAMESPACE, f"{listed.id}/{entry.kind.value}/{entry.value}")
            ),
            "type": _ATTRIBUTE[entry.kind][0],
            "category": _ATTRIBUTE[entry.kind][1],
            "value": entry.value,
            "to_ids": not deleted,
            "deleted": deleted,
            "distribution": "5",  # inherit the event's
            "timestamp": _stamp(changed),
            "comment": listed.id,
            "Tag": _tags(listed.tlp, listed.labels),
        }
        for entry in listed.entries
    ]


def render(view: SinkView, subscriber: SubscriberSinks) -> Rendered:
    days: dict[str, list[tuple[Listed, bool]]] = defaultdict(list)
    for listed in view.active:
        days[listed.created.date().isoformat()].append((listed, False))
    for listed in view.removed:
        days[listed.created.date().isoformat()].append((listed, True))
    org = {"name": "stixbus", "uuid": str(uuid.uuid5(FEED_NAMESPACE, "stixbus"))}
    files: dict[str, bytes] = {}
    manifest: dict[str, Any] = {}
    live = 0
    for day in sorted(days):
        members = days[day]
        attributes = [a for listed, deleted in members for a in _attributes(listed, deleted)]
        live += sum(1 for a in attributes if not a["deleted"])
        levels = [listed.tlp for listed, _ in members if listed.tlp is not None]
        head = {
            "uuid": str(uuid.uuid5(FEED_NAMESPACE, f"{view.org}/{day}")),
            "info": f"stixbus indicators for {view.org}, {day}",
            "date": day,
            "timestamp": max(a["timestamp"] for a in attributes),
            "publish_timestamp": max(a["timestamp"] for a in attributes),
            "published": True,
            "analysis": "2",
            "threat_level_id": "3",
            "Orgc": org,
            "Tag": _tags(max(levels) if levels else None, ()),
        }
        event = {**head, "Attribute": attributes}
        files[f"misp/{head['uuid']}.json"] = orjson.dumps({"Event": event})
        manifest[head["uuid"]] = {k: v for k, v in head.items() if k != "uuid"}
    files["misp/manifest.json"] = orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)
    return Rendered(files, {"misp": live})
