"""STIX 2.0 → 2.1 upgrade, only where it loses nothing (pure).

What changes between 2.0 and 2.1 for the objects the bus carries is mechanical: `spec_version`
moves from the bundle onto every object, indicators gain `pattern_type` ("stix" was the only 2.0
pattern language), `labels` that carried the open-vocabulary *type* become `*_types`, and
`created`/`modified` must show milliseconds.  Where 2.1 needs something 2.0 never said (a
malware's `is_family`, embedded observed-data objects that 2.1 models as separate SCOs), a guess
would put words in the producer's mouth: those objects are refused as `upgrade_not_lossless`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# 2.0 `labels` on these types were the type vocabulary that 2.1 moved to a *_types property.
_LABELS_BECOME = {
    "indicator": "indicator_types",
    "threat-actor": "threat_actor_types",
    "tool": "tool_types",
    "report": "report_types",
}
# 2.1 requires properties 2.0 did not have and that cannot be derived from a 2.0 object.
_NOT_LOSSLESS: dict[str, str] = {
    "malware": "STIX 2.1 requires malware.is_family, which a 2.0 malware object does not state",
    "observed-data": (
        "2.0 observed-data embeds observables that STIX 2.1 models as separate SCOs with their "
        "own ids"
    ),
}
_SECOND_WITHOUT_MILLIS = re.compile(r"(T\d{2}:\d{2}:\d{2})Z$")
_SECOND_WITH_SHORT_FRACTION = re.compile(r"(T\d{2}:\d{2}:\d{2}\.\d{1,2})Z$")


@dataclass(frozen=True, slots=True)
class Upgraded:
    object: dict[str, Any]
    changes: tuple[str, ...]


class NotLossless(ValueError):
    """The 2.0 object cannot become 2.1 without inventing content."""


def _with_millis(timestamp: Any) -> Any:
    """The same instant with at least millisecond precision, as 2.1 requires on created/modified."""
    if not isinstance(timestamp, str):
        return timestamp
    if _SECOND_WITHOUT_MILLIS.search(timestamp):
        return timestamp[:-1] + ".000Z"
    short = _SECOND_WITH_SHORT_FRACTION.search(timestamp)
    if short:
        fraction = short.group(1).split(".", 1)[1]
        return timestamp[: -1 - len(fraction)] + fraction.ljust(3, "0") + "Z"
    return timestamp


def is_stix20_object(obj: dict[str, Any], bundle_is_20: bool) -> bool:
    """A 2.0 object: no spec_version (2.1 SDOs/SROs must carry one) or spec_version "2.0"."""
    version = obj.get("spec_version")
    if version == "2.0":
        return True
    # SCOs may omit spec_version in 2.1, so only objects with `created` (SDO/SRO/marking) count.
    return version is None and (bundle_is_20 or "created" in obj)


def upgrade_object(obj: dict[str, Any]) -> Upgraded:
    """Upgrade one 2.0 object to 2.1; raises NotLossless when that would invent content."""
    object_type = obj.get("type")
    if isinstance(object_type, str) and object_type in _NOT_LOSSLESS:
        raise NotLossless(_NOT_LOSSLESS[object_type])
    upgraded = dict(obj)
    changes = ["spec_version set to 2.1"]
    upgraded["spec_version"] = "2.1"
    for name in ("created", "modified"):
        if name in upgraded:
            with_millis = _with_millis(upgraded[name])
            if with_millis != upgraded[name]:
                upgraded[name] = with_millis
                changes.append(f"{name} given millisecond precision")
    if object_type == "indicator" and "pattern_type" not in upgraded:
        upgraded["pattern_type"] = "stix"
        changes.append("pattern_type set to stix")
    target = _LABELS_BECOME.get(object_type) if isinstance(object_type, str) else None
    if target is not None and "labels" in upgraded and target not in upgraded:
        upgraded[target] = upgraded.pop("labels")
        changes.append(f"labels moved to {target}")
    return Upgraded(upgraded, tuple(changes))
