"""Sliding-window attempt limits (pure: the clock is injected), shared by every HTTP server of
the bus (the TAXII inbox's token checks, the TAXII server's and the sinks' logins and
per-org request rates)."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable


class RateLimited(Exception):
    """Too many attempts for one key; `retry_after` seconds until the next is allowed."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.0f}s")
        self.retry_after = retry_after


class AttemptLimiter:
    """At most `limit` attempts per key per `window` seconds (sliding window, bounded keys)."""

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window, self.max_keys, self.clock = limit, window, max_keys, clock
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, key: str) -> None:
        """Count one attempt for `key`, or raise RateLimited."""
        now = self.clock()
        times = self._seen.pop(key, None) or deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        self._seen[key] = times
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        if len(times) >= self.limit:
            raise RateLimited(times[0] + self.window - now)
        times.append(now)
