"""Renderers of what ISPs and network devices load, one module per format (pure).

Every format has `render(view, subscriber) -> Rendered`: the files it writes (paths relative
to the subscriber's folder) and the entry count of each list it holds (the safety check and the
metrics read those).  `current_set` builds the view from delivered objects; `safety` decides
whether a render may replace the previous one.  The shell is egress/sinks/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.sinks import Format, SubscriberSinks
from stixbus.core.sinks.current_set import CurrentSet, Kind, Listed, by_kind


@dataclass(frozen=True)
class SinkView:
    """One subscriber's current set at `now`, as every renderer reads it."""

    org: str
    now: datetime
    serial: int  # increases whenever the active entries change (rpz.next_serial)
    active: tuple[Listed, ...]
    removed: tuple[Listed, ...] = ()
    values: dict[Kind, list[str]] = field(default_factory=dict)
    # Results renderers share within one view (rpz.records is computed once per publish).
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, org: str, current: CurrentSet, now: datetime, serial: int) -> SinkView:
        active = tuple(current.active(now))
        return cls(org, now, serial, active, tuple(current.removed(now)), by_kind(active))

    def with_serial(self, serial: int) -> SinkView:
        return SinkView(
            self.org, self.now, serial, self.active, self.removed, self.values, self.memo
        )


@dataclass(frozen=True)
class Rendered:
    files: dict[str, bytes]
    counts: dict[str, int]  # list name -> entries (metrics, safety)


Renderer = Callable[[SinkView, SubscriberSinks], Rendered]


def renderers() -> dict[Format, Renderer]:
    """Format -> its render function (imported here so each module stays standalone)."""
    from stixbus.core.sinks import edl, misp_feed, rpz, suricata, zeek

    return {
        Format.RPZ: rpz.render,
        Format.EDL: edl.render,
        Format.SURICATA: suricata.render,
        Format.ZEEK: zeek.render,
        Format.MISP: misp_feed.render,
    }
