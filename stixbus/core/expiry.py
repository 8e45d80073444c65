"""Timer-driven expiry and state bounding (pure): which keys need a tick, which can go, and when.

A key needs a tick when some subscriber still holds a live minted version although none of its
sources vouches any more (`needs_revocation`), when nothing vouches and every view is final but
the key is not yet marked settled (`needs_settling`), or when it has been settled for longer than
the grace period (`is_collectable`).  All three are functions of the state and the clock, and the
moment each becomes true is derivable from the state alone (`next_deadline`), so the route agent
keeps an in-memory `ExpiryIndex` of (deadline, key) for the keys due within a horizon instead of
scanning its table on every run (it scans the deadline headers once per horizon).
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


# Rescan when this fraction of the horizon is left (a 1-day horizon: every 18 h, 6 h to spare).
RESCAN_MARGIN = 0.25


class ExpiryIndex:
    """(deadline, key) for the keys of one worker's table that are due within a horizon,
    earliest first, and the count of all the table's keys.

    Bounded by the keys due soon, not by the table: a rebuild (`begin_rebuild(now)` /
    `rebuilt` / `end_rebuild`, a scan of the local table's deadline headers) holds only the
    keys whose deadline is at most `horizon_end` = now + `horizon_seconds`; keys with a later
    deadline, or none, are only counted.  Before the horizon runs out (`needs_rebuild`: a
    quarter of it left) the timer scans again and picks up the keys that now fall inside.

    The route agent calls `set` whenever it writes a key and `discard` when it deletes one
    (saying whether the write created the key / whether it existed, for the count); a deadline
    beyond the horizon drops the key's entry, so a deadline moved out of the horizon fires no
    stale tick.  The timer calls `pop_due` and ticks only those keys.  Keys the agent writes
    while a rebuild is in progress keep the agent's deadline.

    A heap with lazy deletion: `_deadline` holds each held key's current deadline, heap
    entries that disagree with it are skipped.

    `len()` is the number of keys in the local table: the keys the last rebuild read plus the
    keys created since, minus those deleted.  Exact, except for a key created or deleted while a
    rebuild runs in a partition whose (snapshot) iterator the scan had not opened yet: it is
    then counted twice or not at all, until the next rebuild (at most the creations/deletions
    during one scan)."""

    def __init__(self, horizon_seconds: float = 86400.0) -> None:
        if horizon_seconds <= 0:
            raise ValueError(f"horizon_seconds must be > 0, got {horizon_seconds}")
        self.horizon_seconds = horizon_seconds
        self._deadline: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []
        self._touched: set[bytes] | None = None
        self._popped: set[bytes] = set()  # popped by the last `pop_due`, not set since
        self._keys = 0  # keys in the local table
        self.horizon_end: float | None = None  # POSIX timestamp; None: no rebuild yet
        self.stale = True  # rebuild before first use (and after every rebalance)

    def __len__(self) -> int:
        """Keys in the local table (held or not)."""
        return self._keys

    @property
    def held(self) -> int:
        """Keys held (due within the horizon)."""
        return len(self._deadline)

    def needs_rebuild(self, now: datetime) -> bool:
        """Stale, or less than a quarter of the horizon left: scan the table's headers again."""
        if self.stale or self.horizon_end is None:
            return True
        return now.timestamp() >= self.horizon_end - RESCAN_MARGIN * self.horizon_seconds

    def set(self, key: bytes, deadline: datetime | None, *, created: bool = False) -> None:
        """The agent wrote `key` (`created`: it was not in the table before)."""
        if created:
            self._keys += 1
        if self._touched is not None:
            self._touched.add(key)
        self._popped.discard(key)
        self._set(key, deadline)

    def set_if_absent(self, key: bytes, deadline: datetime | None) -> None:
        """`set` a key the last `pop_due` returned, unless the agent set it since then (the
        agent's deadline wins)."""
        if key in self._popped:
            self._popped.discard(key)
            self._set(key, deadline)

    def _set(self, key: bytes, deadline: datetime | None) -> None:
        stamp = None if deadline is None else deadline.timestamp()
        if stamp is None or self.horizon_end is None or stamp > self.horizon_end:
            self._deadline.pop(key, None)  # not held: its heap entry, if any, is now stale
            return
        if self._deadline.get(key) == stamp:
            return
        self._deadline[key] = stamp
        heapq.heappush(self._heap, (stamp, key))
        if len(self._heap) > 2 * len(self._deadline) + 1024:
            self._compact()

    def discard(self, key: bytes, *, existed: bool = True) -> None:
        """The agent deleted `key` (`existed`: it was in the table)."""
        if existed:
            self._keys -= 1
        if self._touched is not None:
            self._touched.add(key)
        self._popped.discard(key)
        self._deadline.pop(key, None)

    def pop_due(self, now: datetime) -> list[bytes]:
        """Keys whose deadline has come, removed from the index (`set_if_absent` them to keep
        them)."""
        limit = now.timestamp()
        due: list[bytes] = []
        heap, current = self._heap, self._deadline
        while heap and heap[0][0] <= limit:
            stamp, key = heapq.heappop(heap)
            if current.get(key) == stamp:
                del current[key]
                due.append(key)
        self._popped = set(due)
        return due

    def next_due(self) -> float | None:
        """The earliest deadline held (a POSIX timestamp), for metrics and tests."""
        while self._heap and self._deadline.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def begin_rebuild(self, now: datetime) -> None:
        """Forget everything; hold the keys due up to `now` + the horizon from here on."""
        self._deadline.clear()
        self._heap.clear()
        self._popped.clear()
        self._touched = set()
        self._keys = 0
        self.horizon_end = now.timestamp() + self.horizon_seconds

    def rebuilt(self, entries: Iterable[tuple[bytes, datetime | None]]) -> None:
        """Entries read from the table during a rebuild (the heap is ordered at the end)."""
        touched = self._touched if self._touched is not None else set()
        current, heap = self._deadline, self._heap
        end = self.horizon_end if self.horizon_end is not None else float("-inf")
        count = 0
        for key, deadline in entries:
            count += 1
            if deadline is None or key in touched:
                continue
            stamp = deadline.timestamp()
            if stamp <= end:
                current[key] = stamp
                heap.append((stamp, key))
        self._keys += count

    def end_rebuild(self) -> None:
        heapq.heapify(self._heap)
        self._touched = None
        self.stale = False

    def _compact(self) -> None:
        self._heap = [(s, k) for k, s in self._deadline.items()]
        heapq.heapify(self._heap)
