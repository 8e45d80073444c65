"""Timer-driven expiry and state bounding (pure): which keys need a tick, which can go, and when.

A key needs a tick when some subscriber still holds a live minted version although none of its
sources vouches any more (`needs_revocation`), when nothing vouches and every view is final but
the key is not yet marked settled (`needs_settling`), or when it has been settled for longer than
the grace period (`is_collectable`).  All three are functions of the state and the clock, and the
moment each becomes true is derivable from the state alone (`next_deadline`), so the route agent
keeps an in-memory `ExpiryIndex` of (deadline, key) instead of scanning its table.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from datetime import datetime, timedelta

from stixbus.core.dedup import KeyState


def needs_revocation(state: KeyState, now: datetime) -> bool:
    """Some subscriber still holds a live minted version although none of its sources vouches
    any more.  (Forwarded objects carry their own validity; their revocations are events.)"""
    due = state.revocation_due_at()
    return due is not None and due <= now


def needs_settling(state: KeyState, now: datetime) -> bool:
    """Nothing vouches and every view is final, but `settled_at` is not recorded yet."""
    due = state.settling_due_at()
    return due is not None and due <= now


def is_collectable(state: KeyState, now: datetime, grace_seconds: float) -> bool:
    """Settled (nothing vouches, every view final) for longer than the grace period."""
    return state.settled_at is not None and now - state.settled_at > timedelta(
        seconds=grace_seconds
    )


def due_for_tick(state: KeyState, now: datetime, grace_seconds: float) -> bool:
    return (
        needs_revocation(state, now)
        or needs_settling(state, now)
        or is_collectable(state, now, grace_seconds)
    )


def next_deadline(
    intrinsic: datetime | None, settled_at: datetime | None, grace_seconds: float
) -> datetime | None:
    """When the key is next due for a tick: `intrinsic` is `KeyState.expiry_deadline()` (also
    stored in the encoded state's header), GC comes `grace_seconds` after `settled_at`."""
    gc = None
    if settled_at is not None:
        gc = settled_at + timedelta(seconds=grace_seconds, microseconds=1)
    if intrinsic is None:
        return gc
    return intrinsic if gc is None or intrinsic < gc else gc


def state_deadline(state: KeyState, grace_seconds: float) -> datetime | None:
    return next_deadline(state.expiry_deadline(), state.settled_at, grace_seconds)


class ExpiryIndex:
    """(deadline, key) for the keys of one worker's table, earliest first.

    The route agent calls `set` whenever it writes a key and `discard` when it deletes one; the
    timer calls `pop_due` and ticks only those keys.  After a rebalance the index is rebuilt
    from the local table (`begin_rebuild` / `rebuilt` / `end_rebuild`); keys the agent writes
    while a rebuild is in progress keep the agent's deadline.

    A heap with lazy deletion: `_deadline` holds each key's current deadline (None: tracked but
    never due by expiry alone), heap entries that disagree with it are skipped."""

    def __init__(self) -> None:
        self._deadline: dict[bytes, float | None] = {}
        self._heap: list[tuple[float, bytes]] = []
        self._touched: set[bytes] | None = None
        self.stale = True  # rebuild before first use (and after every rebalance)

    def __len__(self) -> int:
        return len(self._deadline)

    def set(self, key: bytes, deadline: datetime | None) -> None:
        if self._touched is not None:
            self._touched.add(key)
        self._set(key, deadline)

    def set_if_absent(self, key: bytes, deadline: datetime | None) -> None:
        """`set` unless the key was set since it was popped (the agent's deadline wins)."""
        if key not in self._deadline:
            self.set(key, deadline)

    def _set(self, key: bytes, deadline: datetime | None) -> None:
        stamp = None if deadline is None else deadline.timestamp()
        if key in self._deadline and self._deadline[key] == stamp:
            return
        self._deadline[key] = stamp
        if stamp is not None:
            heapq.heappush(self._heap, (stamp, key))
            if len(self._heap) > 2 * len(self._deadline) + 1024:
                self._compact()

    def discard(self, key: bytes) -> None:
        if self._touched is not None:
            self._touched.add(key)
        self._deadline.pop(key, None)

    def pop_due(self, now: datetime) -> list[bytes]:
        """Keys whose deadline has come, removed from the index (re-`set` them to keep them)."""
        limit = now.timestamp()
        due: list[bytes] = []
        heap, current = self._heap, self._deadline
        while heap and heap[0][0] <= limit:
            stamp, key = heapq.heappop(heap)
            if current.get(key, -1.0) == stamp:
                del current[key]
                due.append(key)
        return due

    def next_due(self) -> float | None:
        """The earliest deadline held (a POSIX timestamp), for metrics and tests."""
        while self._heap and self._deadline.get(self._heap[0][1], -1.0) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def begin_rebuild(self) -> None:
        self._deadline.clear()
        self._heap.clear()
        self._touched = set()

    def rebuilt(self, entries: Iterable[tuple[bytes, datetime | None]]) -> None:
        """Entries read from the table during a rebuild (the heap is ordered at the end)."""
        touched = self._touched if self._touched is not None else set()
        current, heap = self._deadline, self._heap
        for key, deadline in entries:
            if key in touched:
                continue
            stamp = None if deadline is None else deadline.timestamp()
            current[key] = stamp
            if stamp is not None:
                heap.append((stamp, key))

    def end_rebuild(self) -> None:
        heapq.heapify(self._heap)
        self._touched = None
        self.stale = False

    def _compact(self) -> None:
        self._heap = [(s, k) for k, s in self._deadline.items() if s is not None]
        heapq.heapify(self._heap)
