"""Timer-driven expiry and state bounding (pure): which keys need a tick, which can go."""

from __future__ import annotations

from datetime import datetime, timedelta

from stixbus.dedup import KeyState


def needs_revocation(state: KeyState, now: datetime) -> bool:
    """Some subscriber still holds a live version although none of its sources vouches any more."""
    for view in state.views.values():
        if view.revoked:
            continue
        sources = [state.sources[s] for s in view.source_ids if s in state.sources]
        if not any(src.active(now) for src in sources):
            return True
    return False


def is_collectable(state: KeyState, now: datetime, grace_seconds: float) -> bool:
    """Settled (nothing vouches, every view final) for longer than the grace period."""
    return state.settled_at is not None and now - state.settled_at > timedelta(
        seconds=grace_seconds
    )


def due_for_tick(state: KeyState, now: datetime, grace_seconds: float) -> bool:
    return needs_revocation(state, now) or is_collectable(state, now, grace_seconds)
