"""Indicator decay (pure): a default `valid_until` by observable type, and per-agreement
maximum age (docs/feedback.md, "Decay").

Both apply to bus-minted indicators (keys with a canonical pattern) and both count from SINCE,
the Kafka time at which the bus accepted the source's first version (kept in its planning
record, stixbus/core/dedup.py): the same on every replay (deterministic re-minting), and a new
version that changes nothing material does not re-deliver.  A producer that wants an indicator
to live longer gives it a `valid_until`.  Forwarded objects keep the producer's validity.

- `DecayPolicy.default_until`: a source without `valid_until` stops vouching after the default
  lifetime of its observable type (the shortest, when a pattern mixes types; types without a
  lifetime, such as file hashes, never decay).  The route stage writes it into the source's
  planning record (stixbus/core/dedup.py), so the existing expiry machinery revokes it.
- `capped_until`: an agreement's `max_age` caps the `valid_until` of the minted indicator its
  subscribers get; the route stage revokes their copy when it passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from stixbus.core.ids import parse_time, stix_time

# The documented defaults (settings override them; docs/feedback.md explains the choice).
DAY = 86_400.0
DEFAULT_LIFETIMES: dict[str, float] = {
    "ipv4-addr": 30 * DAY,
    "ipv6-addr": 30 * DAY,
    "url": 30 * DAY,
    "domain-name": 90 * DAY,
    "email-addr": 90 * DAY,
}


@dataclass(frozen=True)
class DecayPolicy:
    """Default lifetimes per observable type; a type absent (or 0) never decays by default."""

    lifetimes: Mapping[str, timedelta] = field(default_factory=dict)

    @staticmethod
    def from_seconds(seconds: Mapping[str, float]) -> DecayPolicy:
        return DecayPolicy({t: timedelta(seconds=s) for t, s in seconds.items() if s > 0})

    def lifetime(self, observable_types: Iterable[str]) -> timedelta | None:
        """The shortest default lifetime among these types; None: no default applies."""
        found = [self.lifetimes[t] for t in observable_types if t in self.lifetimes]
        return min(found) if found else None

    def default_until(
        self, observable_types: Iterable[str], valid_from: object, published_at: datetime
    ) -> str | None:
        """The `valid_until` a source without one gets (a STIX timestamp), or None."""
        lifetime = self.lifetime(observable_types)
        if lifetime is None:
            return None
        start = published_at
        if isinstance(valid_from, str):
            try:
                start = max(start, parse_time(valid_from))
            except ValueError:
                pass
        return stix_time(start + lifetime)


NO_DECAY = DecayPolicy()
# The planning-record property holding when the bus first accepted a source (a STIX timestamp).
SINCE = "x_stixbus_since"


def accepted_since(planning_object: dict[str, Any], published_at: datetime) -> datetime:
    since = planning_object.get(SINCE)
    return parse_time(since) if isinstance(since, str) else published_at


def capped_until(valid_until: str | None, since: datetime, max_age: timedelta | None) -> str | None:
    """`valid_until` of a minted body under an agreement's `max_age`, counted from `since`
    (the newest of its sources' SINCE); None: open-ended."""
    if max_age is None:
        return valid_until
    cap = since + max_age
    if valid_until is not None and parse_time(valid_until) <= cap:
        return valid_until
    return stix_time(cap)


def describe(duration: timedelta | None) -> str:
    """'30 days', '90 s': durations as explain shows them."""
    if duration is None:
        return "none"
    seconds = duration.total_seconds()
    for unit, size in (("days", DAY), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:g} s"


def expires_at(
    valid_until: object,
    observable_types: Iterable[str],
    valid_from: object,
    published_at: datetime,
    policy: DecayPolicy,
    max_age: timedelta | None,
) -> tuple[datetime | None, str]:
    """When an indicator published at `published_at` expires for a subscriber whose agreement
    has `max_age`, and why (for `stixbus explain`)."""
    types = tuple(observable_types)
    if isinstance(valid_until, str):
        until: str | None = valid_until
        why = "the producer's valid_until"
    else:
        until = policy.default_until(types, valid_from, published_at)
        lifetime = policy.lifetime(types)
        why = (
            f"the bus default lifetime {describe(lifetime)} for {', '.join(types)} (no valid_until)"
        )
    capped = capped_until(until, published_at, max_age)
    if capped is not None and capped != until:
        why = f"the agreement's max_age {describe(max_age)}"
    if capped is None:
        return None, "never: no valid_until and no default lifetime or max_age applies"
    return parse_time(capped), why
