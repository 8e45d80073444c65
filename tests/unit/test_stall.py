"""The stall watchdog's rule (stixbus/core/stall.py)."""

from __future__ import annotations

from stixbus.core.stall import StallWatch


def test_a_partition_with_waiting_records_and_a_frozen_offset_is_stalled() -> None:
    watch = StallWatch()
    positions = {"claims/1": (7, 35), "claims/0": (66, 66)}
    for t in (0.0, 30.0, 61.0):
        watch.observe(t, positions)
    stalls = watch.stalled(61.0, positions, 60)
    assert [(s.partition, s.committed, s.end) for s in stalls] == [("claims/1", 7, 35)]
    assert "committed offset 7, end offset 35, no progress for 61 s" in stalls[0].describe()


def test_progress_or_an_empty_backlog_resets_the_clock() -> None:
    watch = StallWatch()
    watch.observe(0.0, {"p": (7, 35)})
    watch.observe(50.0, {"p": (8, 35)})  # moved
    watch.observe(100.0, {"p": (8, 35)})
    assert watch.stalled(100.0, {"p": (8, 35)}, 60) == []
    watch.observe(120.0, {"p": (35, 35)})  # caught up: nothing waits
    watch.observe(200.0, {"p": (35, 36)})
    assert watch.stalled(200.0, {"p": (35, 36)}, 60) == []
    watch.observe(261.0, {"p": (35, 36)})
    assert [s.seconds for s in watch.stalled(261.0, {"p": (35, 36)}, 60)] == [61.0]


def test_a_partition_never_committed_counts_from_zero_and_revoked_ones_are_dropped() -> None:
    watch = StallWatch()
    watch.observe(0.0, {"new": (None, 3), "gone": (1, 9)})
    watch.observe(70.0, {"new": (None, 3)})  # "gone" was revoked
    assert [s.partition for s in watch.stalled(70.0, {"new": (None, 3)}, 60)] == ["new"]
    watch.forget()  # a rebalance: every clock starts again
    watch.observe(80.0, {"new": (None, 3)})
    assert watch.stalled(80.0, {"new": (None, 3)}, 60) == []


def test_an_unknown_end_offset_is_not_a_stall() -> None:
    watch = StallWatch()
    watch.observe(0.0, {"p": (None, None)})
    watch.observe(100.0, {"p": (None, None)})
    assert watch.stalled(100.0, {"p": (None, None)}, 60) == []


def test_a_stall_is_first_read_again_then_stops_the_worker() -> None:
    watch, p = StallWatch(), {"ingest/1": (5, 58)}
    watch.observe(0.0, p)
    assert watch.actions(10.0, p, 30) == ([], [])
    watch.observe(16.0, p)
    seek, stop = watch.actions(16.0, p, 30)
    assert [s.partition for s in seek] == ["ingest/1"] and stop == []
    watch.observe(20.0, p)
    assert watch.actions(20.0, p, 30) == ([], [])  # read again once per stall
    watch.observe(31.0, p)
    seek, stop = watch.actions(31.0, p, 30)
    assert seek == [] and [s.committed for s in stop] == [5]


def test_progress_after_the_read_again_ends_the_stall() -> None:
    watch = StallWatch()
    watch.observe(0.0, {"p": (5, 58)})
    watch.observe(16.0, {"p": (5, 58)})
    assert watch.actions(16.0, {"p": (5, 58)}, 30)[0]
    watch.observe(20.0, {"p": (40, 58)})  # moved after the seek
    watch.observe(31.0, {"p": (40, 58)})
    assert watch.actions(31.0, {"p": (40, 58)}, 30) == ([], [])


def test_a_later_stall_is_read_again_first_too() -> None:
    watch = StallWatch()
    watch.observe(0.0, {"p": (5, 58)})
    watch.observe(16.0, {"p": (5, 58)})
    assert watch.actions(16.0, {"p": (5, 58)}, 30)[0]
    watch.observe(20.0, {"p": (40, 58)})  # the read again helped
    watch.observe(52.0, {"p": (40, 58)})  # then it stalls again, 32 s
    seek, stop = watch.actions(52.0, {"p": (40, 58)}, 30)
    assert [s.partition for s in seek] == ["p"] and stop == []


def test_a_hole_under_the_acked_offsets_is_read_again_early() -> None:
    """Agents ack in order: acked offsets above an unacked committed one mean the consumer
    skipped it, so waiting half the bound only delays the delivery."""
    watch, p = StallWatch(), {"claims/1": (19, 53), "slow/0": (7, 9)}
    watch.observe(0.0, p)
    watch.observe(11.0, p)
    seek, stop = watch.actions(11.0, p, 120, holes=frozenset({"claims/1"}), hole_seconds=10)
    assert [s.partition for s in seek] == ["claims/1"] and stop == []  # slow/0 has no hole


def test_a_hole_is_an_acked_offset_above_the_unacked_committed_one() -> None:
    from stixbus.core.stall import has_hole

    assert has_hole(19, 21) and not has_hole(19, 19) and not has_hole(None, 5)
    assert not has_hole(19, None)
