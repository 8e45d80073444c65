"""MISP feed connector: `manifest.json` + `<event uuid>.json` from a directory or an HTTP URL.

Events are converted to STIX 2.1 by MISP's own converter (`misp-stix`, `MISPtoSTIX21Parser`).
On top of that:
- TLP: every `tlp:*` tag (event and attribute level) is read with `schemas.tlp`; each object gets
  the most restrictive of its event's and its own, as the TLP 2.0 marking id (misp-stix's own
  TLP marking-definitions are dropped).  An unknown `tlp:` tag fails closed: the event is not
  published and the report says why.  No TLP tag at all: `tlp` from the config, else the org's
  default TLP (the bus applies it).
- labels: the config's `labels`, plus the event's non-TLP tags (`event_tags_as_labels`), go on
  every indicator, so agreements that route on labels (e.g. "phishing") see them.
- only new events or events whose manifest timestamp changed are fetched; within an updated
  event only objects whose `(id, modified)` was not published before are sent again.
An event is marked done in the state only after the broker acknowledged all its objects.  A
malformed event is reported (with its uuid) and retried on the next run; it never blocks the
others.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

import orjson
from pydantic import Field, field_validator

from connectors.base import (
    ConnectorError,
    PullConfig,
    Report,
    SourceUnavailable,
    StateFile,
    Submitter,
    read_source,
    secret_from_env,
)
from schemas.envelope import Reason
from schemas.tlp import TLP, tlp_of_marking
from stixbus.settings import Settings


class MispConfig(PullConfig):
    connector: Literal["misp"] = "misp"
    source: str = Field(description="Feed directory, file:// or http(s):// base URL")
    api_key_env: str | None = Field(default=None, description="Env var with a MISP auth key")
    api_key_header: str = "Authorization"
    tlp: str | None = Field(default=None, description="TLP for events without a tlp: tag")
    labels: list[str] = Field(default_factory=list, description="Added to every indicator")
    event_tags_as_labels: bool = True
    confidence: int | None = Field(default=None, ge=0, le=100)
    include_types: list[str] | None = Field(
        default=None, description="Publish only these STIX types (default: everything)"
    )
    created_by: Literal["source", "publisher"] = Field(
        default="source",
        description="source: keep the MISP creator org (Orgc) as created_by_ref (a relay); "
        "publisher: drop it so the bus binds the publishing org's identity",
    )

    @field_validator("tlp")
    @classmethod
    def _tlp(cls, value: str | None) -> str | None:
        if value is not None:
            TLP.parse(value)
        return value


# -- pure parts ---------------------------------------------------------------------------


def tag_names(container: dict[str, Any]) -> list[str]:
    tags = container.get("Tag") or []
    return [str(t.get("name", "")) for t in tags if isinstance(t, dict) and t.get("name")]


def tlp_of_tags(names: list[str]) -> TLP | None:
    """The most restrictive `tlp:*` tag; ValueError for an unknown TLP tag (fail closed)."""
    found: TLP | None = None
    for name in names:
        if not name.lower().startswith("tlp:"):
            continue
        tlp = TLP.parse(name)  # raises ValueError naming the tag
        found = tlp if found is None else max(found, tlp)
    return found


def _is_tlp_marking(obj: dict[str, Any]) -> bool:
    if tlp_of_marking(str(obj.get("id"))) is not None:
        return True
    name = str(obj.get("name", "")).lower()
    return obj.get("definition_type") == "tlp" or name.startswith("tlp:")


def convert_event(event: dict[str, Any], config: MispConfig) -> list[dict[str, Any]]:
    """One MISP event (the JSON of a feed file) → STIX 2.1 objects ready to publish."""
    body = event.get("Event", event)
    if not isinstance(body, dict) or not body.get("uuid"):
        raise ValueError("not a MISP event: expected {'Event': {'uuid': …, …}}")
    event_tags = tag_names(body)
    event_tlp = tlp_of_tags(event_tags)
    attr_tlp: dict[str, TLP] = {}
    for attribute in _attributes(body):
        tlp = tlp_of_tags(tag_names(attribute))
        if tlp is not None and attribute.get("uuid"):
            attr_tlp[str(attribute["uuid"])] = tlp
    # Imported here: misp-stix pulls in the STIX 1 stack (seconds), other connectors need not.
    from misp_stix_converter import MISPtoSTIX21Parser

    parser = MISPtoSTIX21Parser()  # fresh per event: a failed parse leaves state behind
    parser.parse_misp_event({"Event": body})
    objects: list[dict[str, Any]] = json.loads(parser.bundle.serialize())["objects"]
    markings = {o["id"]: o for o in objects if o.get("type") == "marking-definition"}
    tlp_markings = {mid for mid, o in markings.items() if _is_tlp_marking(o)}
    extra_labels = list(config.labels)
    if config.event_tags_as_labels:
        extra_labels += [
            t for t in event_tags if not t.lower().startswith(("tlp:", "misp-galaxy:"))
        ]
    default_tlp = TLP.parse(config.tlp) if config.tlp else None
    out: list[dict[str, Any]] = []
    for obj in objects:
        if obj["id"] in tlp_markings:
            continue
        if config.include_types is not None and obj.get("type") not in config.include_types:
            continue
        if config.created_by == "publisher":
            if obj.get("type") == "identity":
                continue  # the MISP creator org; the bus binds the publisher's identity
            obj.pop("created_by_ref", None)
        if "created" not in obj:  # SCO: markings and labels do not apply the same way
            out.append(obj)
            continue
        refs = list(obj.get("object_marking_refs", []))
        tlps = [t for r in refs if (t := tlp_of_marking(r)) is not None]
        tlps += [attr_tlp[u] for u in _uuids_of(obj["id"]) if u in attr_tlp]
        if event_tlp is not None:
            tlps.append(event_tlp)
        chosen = max(tlps) if tlps else default_tlp
        refs = [r for r in refs if r not in tlp_markings and tlp_of_marking(r) is None]
        if chosen is not None:
            refs.insert(0, chosen.marking_id)
        if refs:
            obj["object_marking_refs"] = refs
        else:
            obj.pop("object_marking_refs", None)
        if obj.get("type") == "indicator":
            labels = list(obj.get("labels", []))
            labels += [x for x in extra_labels if x not in labels]
            if labels:
                obj["labels"] = labels
            if config.confidence is not None:
                obj["confidence"] = config.confidence
        out.append(obj)
    return out


def _attributes(body: dict[str, Any]) -> list[dict[str, Any]]:
    attrs = [a for a in body.get("Attribute") or [] if isinstance(a, dict)]
    for obj in body.get("Object") or []:
        if isinstance(obj, dict):
            attrs += [a for a in obj.get("Attribute") or [] if isinstance(a, dict)]
    return attrs


def _uuids_of(stix_id: str) -> list[str]:
    return [stix_id.split("--", 1)[-1]]


def version_of(obj: dict[str, Any]) -> str:
    return str(obj.get("modified") or obj.get("created") or "")


# -- the run ------------------------------------------------------------------------------


async def run_once(
    config: MispConfig,
    settings: Settings,
    report: Report,
    submitter: Submitter,
    progress_total: Callable[[int], None] | None = None,
) -> None:
    base = config.source.rstrip("/")
    kwargs: dict[str, Any] = {}
    key = secret_from_env(config.api_key_env, f"misp {config.name} auth key")
    if key:
        kwargs["headers"] = {config.api_key_header: key}
    manifest_raw = read_source(f"{base}/manifest.json", **kwargs)
    try:
        manifest = orjson.loads(manifest_raw)
    except orjson.JSONDecodeError as exc:
        raise ConnectorError(
            f"MISP feed {base}/manifest.json is not JSON ({exc}): is `source` a MISP feed?"
        ) from None
    if not isinstance(manifest, dict):
        raise ConnectorError(f"MISP feed {base}/manifest.json must map event uuids to metadata")
    store = StateFile(config.state_path(settings))
    state = store.load()
    events: dict[str, dict[str, Any]] = state.setdefault("events", {})
    submitter.checkpoint = lambda: store.save(state)

    todo: list[tuple[str, str]] = []
    for uuid_, meta in manifest.items():
        stamp = str(meta.get("timestamp", "")) if isinstance(meta, dict) else ""
        if events.get(uuid_, {}).get("timestamp") == stamp:
            report.unchanged += 1
        else:
            todo.append((uuid_, stamp))
    todo.sort(key=lambda item: (item[1], item[0]))

    for uuid_, stamp in todo:
        where = f"MISP feed {base} event {uuid_}"
        try:
            raw = read_source(f"{base}/{uuid_}.json", **kwargs)
        except SourceUnavailable as exc:
            report.reject(f"/events/{uuid_}", f"{where}: {exc}", Reason.INTERNAL_ERROR)
            continue
        try:
            objects = convert_event(orjson.loads(raw), config)
        except Exception as exc:  # misp-stix raises many types; the event is reported, not lost
            report.reject(
                f"/events/{uuid_}",
                f"{where}: cannot convert ({type(exc).__name__}: {exc}) — fix the event in MISP; "
                "it is retried on every run until it converts",
                Reason.NOT_STIX,
            )
            continue
        report.read += 1
        seen: dict[str, str] = events.get(uuid_, {}).get("versions", {})
        new = [o for o in objects if seen.get(o["id"]) != version_of(o)]
        report.unchanged += len(objects) - len(new)

        def commit(
            u: str = uuid_,
            s: str = stamp,
            objs: list[dict[str, Any]] = new,
            old: dict[str, str] = seen,
        ) -> None:
            versions = dict(old)
            versions.update({o["id"]: version_of(o) for o in objs})
            events[u] = {"timestamp": s, "versions": versions}

        await submitter.add(new, commit)
    await submitter.flush()
