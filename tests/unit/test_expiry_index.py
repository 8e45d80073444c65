"""The expiry index holds only the keys due within its horizon, and counts the whole table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from stixbus.core.expiry import RESCAN_MARGIN, ExpiryIndex
from stixbus.settings import Settings

T0 = datetime(2026, 6, 1, tzinfo=UTC)
DAY = 86400.0


def rebuild(index: ExpiryIndex, now: datetime, table: dict[bytes, datetime | None]) -> None:
    """What agents/expiry.py's `_scan` does: read every key's deadline, in batches."""
    index.begin_rebuild(now)
    items = list(table.items())
    for start in range(0, len(items), 3):
        index.rebuilt(items[start : start + 3])
    index.end_rebuild()


def test_far_future_keys_are_counted_not_held_until_the_horizon_reaches_them() -> None:
    index = ExpiryIndex(horizon_seconds=DAY)
    table: dict[bytes, datetime | None] = {
        b"soon": T0 + timedelta(hours=1),
        b"next-week": T0 + timedelta(days=7),
        b"never": None,
    }
    rebuild(index, T0, table)
    assert len(index) == 3 and index.held == 1 and index.next_due() == table[b"soon"].timestamp()  # type: ignore[union-attr]
    # the agent writes a key due in a year: counted, not held; one due in an hour: held
    index.set(b"next-year", T0 + timedelta(days=365), created=True)
    index.set(b"in-an-hour", T0 + timedelta(hours=1), created=True)
    assert len(index) == 5 and index.held == 2
    assert not index.needs_rebuild(T0 + timedelta(hours=17))
    later = T0 + timedelta(days=6, hours=12)
    assert index.needs_rebuild(later)  # long past the horizon's last quarter
    table.update({b"next-year": T0 + timedelta(days=365), b"in-an-hour": table[b"soon"]})
    rebuild(index, later, table)
    assert len(index) == 5 and index.held == 3  # next-week is inside the new horizon
    assert index.pop_due(T0 + timedelta(days=7)) == [b"in-an-hour", b"soon", b"next-week"]
    assert index.held == 0 and len(index) == 5  # popping is no deletion


def test_a_deadline_moved_beyond_the_horizon_fires_no_stale_tick() -> None:
    index = ExpiryIndex(horizon_seconds=DAY)
    rebuild(index, T0, {b"k": T0 + timedelta(minutes=5)})
    index.set(b"k", T0 + timedelta(days=30))  # re-vouched for a month
    assert index.held == 0 and index.pop_due(T0 + timedelta(hours=23)) == []
    index.set(b"k", T0 + timedelta(minutes=10))  # and back
    index.set(b"k", None)
    assert index.pop_due(T0 + timedelta(hours=23)) == [] and index.next_due() is None


def test_set_if_absent_applies_only_to_keys_the_last_pop_returned() -> None:
    index = ExpiryIndex(horizon_seconds=DAY)
    rebuild(index, T0, {b"a": T0, b"b": T0})
    assert index.pop_due(T0) == [b"a", b"b"]
    index.set(b"a", T0 + timedelta(days=9))  # the agent rewrote it meanwhile: beyond the horizon
    index.set_if_absent(b"a", T0 + timedelta(minutes=1))  # the timer's retry must not win
    index.set_if_absent(b"b", T0 + timedelta(minutes=1))
    assert index.pop_due(T0 + timedelta(minutes=1)) == [b"b"]


def test_the_horizon_is_rescanned_before_it_runs_out() -> None:
    index = ExpiryIndex(horizon_seconds=DAY)
    assert index.needs_rebuild(T0)  # never built
    rebuild(index, T0, {})
    margin = RESCAN_MARGIN * DAY
    assert not index.needs_rebuild(T0 + timedelta(seconds=DAY - margin - 1))
    assert index.needs_rebuild(T0 + timedelta(seconds=DAY - margin))
    index.stale = True  # a rebalance
    assert index.needs_rebuild(T0)


# A model: the table (key -> deadline), the agent's writes and deletes, the timer's runs (a
# rebuild whenever needs_rebuild says so, then pop_due) with the clock moving forward.
_keys = st.sampled_from([b"k%d" % n for n in range(8)])
_deadline = st.one_of(st.none(), st.floats(min_value=-DAY, max_value=5 * DAY))
_op = st.one_of(
    st.tuples(st.just("set"), _keys, _deadline),
    st.tuples(st.just("delete"), _keys, st.none()),
    st.tuples(st.just("tick"), st.just(b""), st.floats(min_value=0, max_value=DAY)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, max_size=60), st.floats(min_value=60, max_value=2 * DAY))
def test_every_due_key_is_popped_once_and_the_count_is_the_table(
    ops: list[tuple[str, bytes, float | None]], horizon: float
) -> None:
    index = ExpiryIndex(horizon_seconds=horizon)
    table: dict[bytes, datetime | None] = {}
    popped: dict[bytes, datetime | None] = {}  # key -> the deadline it was popped for
    now = T0
    rebuild(index, now, table)
    for op, key, value in ops:
        if op == "set":
            deadline = None if value is None else T0 + timedelta(seconds=value)
            index.set(key, deadline, created=key not in table)
            table[key] = deadline
            popped.pop(key, None)
        elif op == "delete":
            index.discard(key, existed=key in table)
            table.pop(key, None)
            popped.pop(key, None)
        else:
            assert value is not None
            now += timedelta(seconds=value)
            if index.needs_rebuild(now):
                rebuild(index, now, table)
                popped.clear()  # a rebuild forgets what was popped: the table's headers rule
            due = index.pop_due(now)
            assert len(due) == len(set(due))
            for k in due:
                assert k in table and table[k] is not None and table[k] <= now  # type: ignore[operator]
                assert k not in popped  # popped once per deadline
                popped[k] = table[k]
            missed = [k for k, d in table.items() if d is not None and d <= now and k not in popped]
            assert missed == []
            assert index.horizon_end is not None
            assert index.held <= sum(
                1 for d in table.values() if d is not None and d.timestamp() <= index.horizon_end
            )
        assert len(index) == len(table)


def test_the_horizon_must_exceed_the_scan_interval() -> None:
    with pytest.raises(ValidationError, match="expiry_horizon_seconds"):
        Settings(expiry_scan_seconds=60, expiry_horizon_seconds=60)
    assert Settings().expiry_horizon_seconds == DAY
