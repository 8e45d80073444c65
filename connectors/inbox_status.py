"""TAXII inbox status resources: kept in memory, bounded in bytes and age (connectors/inbox.py)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from schemas.envelope import Receipt

STATUS_ENTRY_OVERHEAD = 256  # bytes counted per status besides its ids, versions and receipt


@dataclass
class StatusEntry:
    org: str
    request_timestamp: str
    versions: dict[str, str]  # object id -> version (modified/created, "" for SCOs)
    receipt: Receipt | None = None
    created: float = 0.0  # StatusStore clock
    size: int = 0  # bytes counted against StatusStore.max_bytes


class StatusStore:
    """Status resources, oldest first, bounded in (approximate) bytes and in age."""

    def __init__(
        self, max_bytes: int, max_age: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_bytes, self.max_age, self.clock = max_bytes, max_age, clock
        self._entries: OrderedDict[str, StatusEntry] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self) -> None:
        cutoff = self.clock() - self.max_age
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.created > cutoff and self.bytes <= self.max_bytes:
                return
            _, gone = self._entries.popitem(last=False)
            self.bytes -= gone.size

    def add(self, sid: str, entry: StatusEntry) -> None:
        entry.created = self.clock()
        entry.size = STATUS_ENTRY_OVERHEAD + sum(
            len(k) + len(v) + 16 for k, v in entry.versions.items()
        )
        self._entries[sid] = entry
        self.bytes += entry.size
        self._expire()

    def get(self, sid: str) -> StatusEntry | None:
        self._expire()
        return self._entries.get(sid)

    def attach(self, receipt: Receipt, size: int) -> None:
        """Record the receipt of a pending status (matched by submission id and publisher)."""
        entry = self.get(receipt.submission_id)
        if entry is None or entry.org != receipt.publisher or entry.receipt is not None:
            return
        entry.receipt = receipt
        entry.size += size
        self.bytes += size
        self._expire()
