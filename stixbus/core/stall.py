"""Which of a worker's partitions have stalled (pure): records wait, and the committed offset
has not moved for longer than a bound.

Why: in the chaos run that kills a broker and a worker together (docs/runbook.md, "Known
issue"), a surviving Faust worker could stop taking records from a partition with nothing in
its log and /readyz still 200.  Nothing was lost (nothing past the stall was committed), but
nothing moved either.  The watchdog (agents/stall.py) first reads the partition again from its
committed offset (half the bound: the consumer had read past records it never handed over);
if that does not help either, at the bound, the worker exits and its restart takes the
partition up again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


def has_hole(committed: int | None, lowest_acked: int | None) -> bool:
    """Agents ack in order, so an acked offset above the unacked committed one means the
    consumer skipped the committed one: it will not come by itself."""
    return committed is not None and lowest_acked is not None and lowest_acked > committed


@dataclass(frozen=True)
class Stall:
    partition: str
    committed: int | None
    end: int
    seconds: float

    def describe(self) -> str:
        return (
            f"{self.partition}: committed offset {self.committed}, end offset {self.end}, "
            f"no progress for {self.seconds:.0f} s"
        )


@dataclass
class StallWatch:
    """Per partition, the committed offset last seen and since when it has not moved while
    records were waiting.  `observe` every few seconds; `forget` over a rebalance."""

    _since: dict[str, tuple[int | None, float]] = field(default_factory=dict)
    _sought: set[str] = field(default_factory=set)  # read again in the current stall

    def observe(self, now: float, positions: Mapping[str, tuple[int | None, int | None]]) -> None:
        """`positions`: partition → (committed offset, end offset); a partition missing
        from it is no longer this worker's."""
        seen: dict[str, tuple[int | None, float]] = {}
        for partition, (committed, end) in positions.items():
            waiting = end is not None and end > (committed or 0)
            before = self._since.get(partition)
            if waiting and before is not None and before[0] == committed:
                seen[partition] = before
            elif waiting:
                seen[partition] = (committed, now)
                self._sought.discard(partition)  # it moved: a new stall starts afresh
        self._since = seen
        self._sought &= set(seen)

    def forget(self) -> None:
        self._since = {}
        self._sought = set()

    def actions(
        self,
        now: float,
        positions: Mapping[str, tuple[int | None, int | None]],
        bound_seconds: float,
        holes: frozenset[str] = frozenset(),
        hole_seconds: float = 10.0,
    ) -> tuple[list[Stall], list[Stall]]:
        """(partitions to read again from the committed offset, partitions that still stall
        after that): the first past half the bound, once per stall; the second past it.

        `holes`: partitions whose agents acked offsets above the committed one while the
        committed one itself was never acked.  Agents ack in order, so that record was skipped
        by the consumer and will not come by itself: read again after `hole_seconds` already."""
        stalls = self.stalled(now, positions, min(bound_seconds / 2, hole_seconds))
        stalls = [s for s in stalls if s.partition in holes or s.seconds > bound_seconds / 2]
        stop = [s for s in stalls if s.seconds > bound_seconds and s.partition in self._sought]
        seek = [s for s in stalls if s.partition not in self._sought]
        self._sought |= {s.partition for s in seek}
        return seek, stop

    def stalled(
        self,
        now: float,
        positions: Mapping[str, tuple[int | None, int | None]],
        bound_seconds: float,
    ) -> list[Stall]:
        """Partitions whose records have waited on an unmoved committed offset for longer
        than `bound_seconds` (as of the last `observe`)."""
        out = []
        for partition, (committed, since) in self._since.items():
            end = positions.get(partition, (None, None))[1]
            if end is not None and now - since > bound_seconds:
                out.append(Stall(partition, committed, end, now - since))
        return out
