"""The safety limit (pure): a list that shrank or grew by more than a fraction in one step is
not published; the previous one stays in place and the shell raises a metric
(`stixbus_sink_held`, alert `StixbusSinkHeld`).

An accidental mass revocation (a publisher's script revoking everything) must not unblock the
whole country at once; an accidental mass publication must not block it.  Small lists move in
big relative steps normally, so a list is only checked once it has `min_entries` entries (or
would have).  A held change is published once it has waited `hold_seconds` (0: never; an
operator restarts the sink with the new baseline, docs/sinks.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...] = ()


def check(
    previous: Mapping[str, int] | None,
    current: Mapping[str, int],
    max_change: float,
    min_entries: int,
) -> Verdict:
    """May `current` (entries per list) replace `previous`?  None: nothing published yet."""
    if previous is None:
        return Verdict(True)
    reasons = []
    for name, count in sorted(current.items()):
        before = previous.get(name, 0)
        if max(before, count) < min_entries:
            continue
        change = abs(count - before) / max(before, 1)
        if change > max_change:
            direction = "shrank" if count < before else "grew"
            reasons.append(
                f"list {name} {direction} from {before} to {count} entries "
                f"({change:.0%} > the limit of {max_change:.0%})"
            )
    return Verdict(not reasons, tuple(reasons))


def release_held(held_since: float | None, now: float, hold_seconds: float) -> bool:
    """Whether a held change has waited long enough to go out anyway."""
    return held_since is not None and hold_seconds > 0 and now - held_since >= hold_seconds
