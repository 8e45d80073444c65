"""Indicator decay (pure): a default `valid_until` by observable type, and per-agreement
maximum age (docs/feedback.md, "Decay").

Both apply to bus-minted indicators (keys with a canonical pattern) and both count from
`published_at`, the Kafka time at which the bus accepted the producer's latest version: it is
the same on every replay (deterministic re-minting) and a producer re-asserting an indicator
(a new version) restarts the clock.  Forwarded objects keep the producer's validity.

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


def capped_until(
    valid_until: str | None, newest_published_at: datetime, max_age: timedelta | None
) -> str | None:
    """`valid_until` of a minted body under an agreement's `max_age` (None: open-ended)."""
    if max_age is None:
        return valid_until
    cap = newest_published_at + max_age
    if valid_until is not None and parse_time(valid_until) <= cap:
        return valid_until
    return stix_time(cap)


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
        why = f"the bus default lifetime {lifetime} for {', '.join(types)} (no valid_until)"
    capped = capped_until(until, published_at, max_age)
    if capped is not None and capped != until:
        why = f"the agreement's max_age {max_age}"
    if capped is None:
        return None, "never: no valid_until and no default lifetime or max_age applies"
    return parse_time(capped), why
