"""Which companion objects each subscriber has been sent (pure; per worker life, in memory).

A delivered indicator references the bus identity (`created_by_ref`) and marking-definitions
(TLP, no-onward-sharing): its companions.  Sending them with every indicator made them more
than half of the records the route stage wrote (issue 13).  The route agent sends a companion to
a subscriber when this memory says it is due: the first time in this worker's life, when its
content changed, or when the last copy is older than the refresh interval (so a deliver topic
whose retention drops old records still holds a recent copy).  A restarted worker, or another
worker of the group, sends each companion once more: at-least-once, like the indicators.
"""

from __future__ import annotations

from typing import Any

import orjson


class CompanionMemory:
    def __init__(self, refresh_seconds: float) -> None:
        self._refresh = refresh_seconds
        self._sent: dict[tuple[str, str], tuple[bytes, float]] = {}

    def due(self, subscriber: str, obj: dict[str, Any], now: float) -> bytes | None:
        """The encoded companion if `subscriber` must be sent it at `now` (seconds), else None.

        Records the send: call it only when the caller sends what it returns (and crashes if
        the send fails)."""
        key = (subscriber, obj["id"])
        encoded = orjson.dumps(obj)
        held = self._sent.get(key)
        if held is not None and held[0] == encoded and now - held[1] < self._refresh:
            return None
        self._sent[key] = (encoded, now)
        return encoded

    def forget(self) -> None:
        """After a rebalance nothing is assumed sent (cheap: a few objects per subscriber)."""
        self._sent.clear()
