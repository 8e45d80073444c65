"""One subscriber's sinks: fold its deliveries into the current set, render every format,
check the safety limit and write what changed atomically (stixbus/files.py).

The zone served by transfer (egress/sinks/dns.py) is the one last *published* here, so a
held render (safety limit) is held for the resolvers too.  After a restart the last published
zone is read back from `rpz.zone` and the last published counts from `.published.json`, so
the safety limit compares against what the network devices actually hold.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from schemas.sinks import Format, SubscriberSinks
from stixbus import metrics
from stixbus.core.sinks import SinkView, renderers, rpz, safety
from stixbus.core.sinks.current_set import CurrentSet
from stixbus.files import atomic_write

log = logging.getLogger("stixbus.sinks")

PUBLISHED_FILE = ".published.json"
HISTORY_STEPS = 64  # IXFR diffs kept (older secondaries get the whole zone)


@dataclass(frozen=True)
class Safety:
    max_change: float = 0.5
    min_entries: int = 100
    hold_seconds: float = 0.0
    enabled: bool = True


@dataclass
class Zone:
    """The published RPZ: what dns.py serves."""

    serial: int
    records: frozenset[rpz.Record]
    history: deque[rpz.Diff] = field(default_factory=lambda: deque(maxlen=HISTORY_STEPS))


@dataclass(frozen=True)
class Outcome:
    written: tuple[str, ...]  # relative paths of files that changed
    held: tuple[Format, ...]  # formats the safety limit refused this time
    reasons: tuple[str, ...]


class SubscriberSink:
    def __init__(
        self,
        config: SubscriberSinks,
        root: Path,
        safety_limits: Safety,
        on_new_serial: Callable[[SubscriberSinks, int], None] | None = None,
    ) -> None:
        self.config = config
        self.folder = root / config.org
        self.safety = safety_limits
        self.current = CurrentSet()
        self.on_new_serial = on_new_serial
        self.zone: Zone | None = self._read_zone()
        self._published: dict[str, dict[str, int]] = self._read_published()
        self._held_since: dict[Format, float] = {}
        self._written: dict[str, bytes] = {}
        self.rendered_version = -1

    def published_zone(self) -> Zone | None:
        """The RPZ last published (what the zone server hands out)."""
        return self.zone

    # --- input ----------------------------------------------------------------------------
    def apply_records(self, records: list[tuple[bytes | None, bytes | None]]) -> bool:
        """Fold a batch of deliver.<org> records in; True when the current set changed."""
        changed = False
        for key, value in records:
            if value is None:
                changed = self.current.forget(key.decode()) if key else changed
                continue
            try:
                obj = orjson.loads(value)
            except orjson.JSONDecodeError:
                log.warning("%s: a delivered record is not JSON; skipped", self.config.org)
                continue
            if isinstance(obj, dict):
                changed = self.current.apply(obj) or changed
        return changed

    # --- output ---------------------------------------------------------------------------
    def publish(self, now: datetime | None = None) -> Outcome:
        """Render every configured format; write the ones that changed and pass the limit."""
        now = now or datetime.now(UTC)
        self.rendered_version = self.current.version
        view = SinkView.of(self.config.org, self.current, now, 0)
        new_zone: Zone | None = None
        if Format.RPZ in self.config.formats:
            records = rpz.records(view, self.config)
            if self.zone is None or records != self.zone.records:
                previous = None if self.zone is None else self.zone.serial
                new_zone = Zone(rpz.next_serial(previous, int(now.timestamp())), records)
            serial = new_zone.serial if new_zone else self.zone.serial if self.zone else 0
            view = view.with_serial(serial)
        written: list[str] = []
        held: list[Format] = []
        reasons: list[str] = []
        render = renderers()
        for fmt in self.config.formats:
            rendered = render[fmt](view, self.config)
            verdict = (
                safety.check(
                    self._published.get(fmt.value),
                    rendered.counts,
                    self.safety.max_change,
                    self.safety.min_entries,
                )
                if self.safety.enabled
                else safety.Verdict(True)
            )
            if not verdict.ok and not safety.release_held(
                self._held_since.get(fmt), time.time(), self.safety.hold_seconds
            ):
                newly = fmt not in self._held_since
                self._held_since.setdefault(fmt, time.time())
                metrics.set_sink_held(self.config.org, fmt.value, True, refused=newly)
                if newly:
                    log.error(
                        "%s %s: safety limit, the previous list stays published: %s",
                        self.config.org, fmt.value, "; ".join(verdict.reasons),
                    )  # fmt: skip
                held.append(fmt)
                reasons.extend(verdict.reasons)
                continue
            if fmt in self._held_since:
                del self._held_since[fmt]
                metrics.set_sink_held(self.config.org, fmt.value, False)
            written += self._write(fmt, rendered.files)
            self._published[fmt.value] = dict(rendered.counts)
            metrics.set_sink_entries(self.config.org, fmt.value, rendered.counts)
            if fmt is Format.RPZ and new_zone is not None:
                self._adopt_zone(new_zone)
        if written:
            atomic_write(self.folder / PUBLISHED_FILE, orjson.dumps(self._published))
        return Outcome(tuple(written), tuple(held), tuple(reasons))

    def _write(self, fmt: Format, files: dict[str, bytes]) -> list[str]:
        written = []
        for relative, data in files.items():
            if self._written.get(relative) == data:
                continue
            path = self.folder / relative
            if not (relative not in self._written and path.is_file() and path.read_bytes() == data):
                atomic_write(path, data)
                written.append(relative)
            self._written[relative] = data
        if fmt is Format.MISP:  # events of days that are gone (tombstoned on the topic)
            for stale in (self.folder / "misp").glob("*.json"):
                if f"misp/{stale.name}" not in files:
                    stale.unlink(missing_ok=True)
                    self._written.pop(f"misp/{stale.name}", None)
                    written.append(f"misp/{stale.name}")
        return written

    def _adopt_zone(self, new_zone: Zone) -> None:
        if self.zone is not None:
            new_zone.history.extend(self.zone.history)
            new_zone.history.append(
                rpz.diff(self.zone.serial, self.zone.records, new_zone.serial, new_zone.records)
            )
        self.zone = new_zone
        if self.on_new_serial is not None:
            self.on_new_serial(self.config, new_zone.serial)

    def _read_zone(self) -> Zone | None:
        path = self.folder / "rpz.zone"
        try:
            parsed = rpz.parse_zone_text(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return None
        return None if parsed is None else Zone(*parsed)

    def _read_published(self) -> dict[str, dict[str, int]]:
        try:
            data = orjson.loads((self.folder / PUBLISHED_FILE).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            str(fmt): {str(k): int(v) for k, v in counts.items() if isinstance(v, int)}
            for fmt, counts in data.items()
            if isinstance(counts, dict)
        }
