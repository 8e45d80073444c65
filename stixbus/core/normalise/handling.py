"""Handling rules at ingest (pure): the effective TLP, standard TLP definitions, bus properties.

- **Effective TLP** = the strictest of the object's TLP markings and its `tlp:<level>` labels
  (TLP 1.0 and 2.0 names, any case: MISP exports TLP as labels).  Unmarked and unlabelled: the
  publisher's default.  Every accepted object then *carries* its effective TLP as a marking, so
  what the bus forwards is marked with what it was routed under.
- **Standard TLP ids** are not redefinable: a marking-definition under a TLP 1.0/2.0 id must be
  that standard definition, or a delivered copy would fail the validator (and mean something else).
- **`x_stixbus_*`** properties are the bus's own (provenance it adds on delivery): a publisher's
  are stripped with a warning, never passed on as if the bus had written them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from schemas.tlp import MARKING_TLP, OPENCTI_AMBER_STRICT_ID, TLP, TLP1_MARKING_ID, TLP2_MARKING_ID

BUS_PROPERTY_PREFIX = "x_stixbus_"
TLP2_EXTENSION_ID = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
_TLP1_NAME = {TLP.CLEAR: "white", TLP.GREEN: "green", TLP.AMBER: "amber", TLP.RED: "red"}


def label_tlp(obj: dict[str, Any]) -> TLP | None:
    """The strictest `tlp:<level>` label (unknown levels such as MISP's `tlp:ex:chr` ignored)."""
    labels = obj.get("labels")
    if not isinstance(labels, list):
        return None
    strictest: TLP | None = None
    for label in labels:
        if isinstance(label, str) and label[:4].lower() == "tlp:":
            try:
                level = TLP.parse(label)
            except ValueError:
                continue
            strictest = level if strictest is None else max(strictest, level)
    return strictest


def effective_tlp(
    marked: TLP | None, obj: dict[str, Any], default: TLP, label: str
) -> tuple[TLP, bool, str | None]:
    """(effective TLP, inherited from the publisher default, warning) given the strictest TLP
    marking (`marked`, None if none) and the object's labels."""
    labelled = label_tlp(obj)
    if marked is None and labelled is None:
        return default, True, None
    if marked is None:
        assert labelled is not None
        return (
            labelled,
            False,
            (
                f"{label}: TLP given only as label tlp:{labelled.label.lower()}; the bus routes it "
                f"under TLP:{labelled.label} and marks what it delivers"
            ),
        )
    if labelled is None or labelled == marked:
        return marked, False, None
    strictest = max(marked, labelled)
    return (
        strictest,
        False,
        (
            f"{label}: marking says TLP:{marked.label} but label says TLP:{labelled.label}; "
            f"the stricter, TLP:{strictest.label}, applies: make them agree"
        ),
    )


def carry_tlp(obj: dict[str, Any], tlp: TLP) -> dict[str, Any]:
    """`obj` marked with its effective TLP: weaker TLP markings are replaced, an equal one kept."""
    if obj.get("type") == "marking-definition":
        return obj
    refs = obj.get("object_marking_refs")
    refs = list(refs) if isinstance(refs, list) else []
    tlp_refs = [r for r in refs if isinstance(r, str) and r in MARKING_TLP]
    if any(MARKING_TLP[r] == tlp for r in tlp_refs) and all(
        MARKING_TLP[r] <= tlp for r in tlp_refs
    ):
        return obj
    kept = [r for r in refs if r not in tlp_refs]
    return {**obj, "object_marking_refs": [tlp.marking_id, *kept]}


def strip_bus_properties(
    obj: dict[str, Any], label: str, pointer: str
) -> tuple[dict[str, Any], str | None]:
    """`obj` without publisher-written `x_stixbus_*` properties, and a warning naming them."""
    forged = [name for name in obj if name.startswith(BUS_PROPERTY_PREFIX)]
    if not forged:
        return obj, None
    kept = {name: value for name, value in obj.items() if not name.startswith(BUS_PROPERTY_PREFIX)}
    return kept, (
        f"{pointer or '/'}: {label}: removed {', '.join(sorted(forged))}: x_stixbus_* properties "
        "are written by the bus only"
    )


def standard_tlp_problem(obj: dict[str, Any]) -> str | None:
    """Why a marking-definition under a standard TLP id is not that standard definition."""
    marking_id = obj.get("id")
    if obj.get("type") != "marking-definition" or marking_id not in MARKING_TLP:
        return None
    tlp = MARKING_TLP[marking_id]
    if marking_id in TLP1_MARKING_ID.values():
        expected = {"tlp": _TLP1_NAME[tlp]}
        if obj.get("definition_type") == "tlp" and obj.get("definition") == expected:
            return None
        return f"must have definition_type 'tlp' and definition {expected}"
    if marking_id == OPENCTI_AMBER_STRICT_ID:
        return None  # OpenCTI's own id: its shape varies by version; routed as AMBER+STRICT
    assert marking_id == TLP2_MARKING_ID[tlp]
    extension = (obj.get("extensions") or {}).get(TLP2_EXTENSION_ID) or {}
    level = tlp.label.lower()
    if (
        obj.get("name") == f"TLP:{tlp.label}"
        and extension.get("tlp_2_0") == level
        and "definition" not in obj
    ):
        return None
    return f"must be named 'TLP:{tlp.label}' with extension {TLP2_EXTENSION_ID} tlp_2_0 '{level}'"


def trusted_publish_time(record_time: datetime, received_at: datetime, skew: timedelta) -> datetime:
    """The Kafka record timestamp when it is within `skew` of the receive time, else the receive
    time: a producer sets that timestamp, and a backdated one would become the `created` the bus
    mints (and skew latency metrics)."""
    if abs(record_time - received_at) <= skew:
        return record_time
    return received_at
