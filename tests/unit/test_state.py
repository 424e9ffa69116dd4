"""Detector state: dedup memory and velocity times stay bounded; changelog round trip."""

from __future__ import annotations

import pytest

from txguard.fraud.state import (
    AccountHistory,
    DetectorState,
    StateLimits,
    StateNotRestored,
)
from txguard.schema.v1.detector_state_pb2 import AccountState


def test_events_are_capped_oldest_arrival_evicted_first() -> None:
    limits = StateLimits(velocity_window_ms=1_000, max_events=3)
    history = AccountHistory("acct")
    for index in range(5):
        history.record(f"e{index}", index, limits)
    assert history.seen_event_ids == ["e2", "e3", "e4"]
    assert history.recent_event_times_ms == [2, 3, 4]
    assert not history.has_seen("e0") and not history.has_seen("e1")
    assert history.has_seen("e4")


def test_events_older_than_the_horizon_are_forgotten() -> None:
    limits = StateLimits(velocity_window_ms=1_000, min_dedup_horizon_ms=0)
    assert limits.horizon_ms == 1_000
    history = AccountHistory("acct")
    for index, time_ms in enumerate([0, 500, 999, 1_000, 1_500, 2_100]):
        history.record(f"e{index}", time_ms, limits)
    # Newest is 2100: everything at or before 1100 can no longer be in any new event's window.
    assert history.recent_event_times_ms == [1_500, 2_100]
    assert history.seen_event_ids == ["e4", "e5"]
    assert history.last_event_time_ms == 2_100


def test_dedup_horizon_outlasts_a_short_velocity_window() -> None:
    limits = StateLimits(velocity_window_ms=1_000, min_dedup_horizon_ms=60_000)
    history = AccountHistory("acct")
    history.record("first", 0, limits)
    history.record("later", 30_000, limits)
    assert history.has_seen("first")
    assert history.count_in_window(30_000, 1_000) == 1
    history.record("much-later", 60_000, limits)
    assert not history.has_seen("first")


def test_a_late_event_is_kept_until_it_reaches_the_front() -> None:
    limits = StateLimits(velocity_window_ms=1_000, min_dedup_horizon_ms=0)
    history = AccountHistory("acct")
    history.record("new", 5_000, limits)
    history.record("late", 3_000, limits)  # already outside the horizon, but behind "new"
    assert history.seen_event_ids == ["new", "late"]
    history.record("newer", 6_500, limits)  # "new" expires, then "late" is at the front
    assert history.seen_event_ids == ["newer"]
    assert history.recent_event_times_ms == [6_500]


def test_history_round_trips_through_the_changelog_proto() -> None:
    limits = StateLimits(velocity_window_ms=1_000)
    history = AccountHistory("acct")
    history.record("a", 100, limits)
    history.record("b", 50, limits)
    proto = AccountState.FromString(history.to_proto().SerializeToString())
    assert proto.account_id == "acct"
    # Parallel lists in arrival order: id i happened at time i.
    assert list(proto.seen_event_ids) == ["a", "b"]
    assert list(proto.recent_event_times_ms) == [100, 50]
    assert proto.last_event_time_ms == 100
    restored = AccountHistory.from_proto(proto)
    assert restored.has_seen("a") and restored.has_seen("b")
    assert restored.count_in_window(100, 1_000) == 2
    assert restored.to_proto() == proto


def test_detector_state_dedups_and_reports_each_changed_account_once() -> None:
    state = DetectorState(StateLimits(velocity_window_ms=1_000))
    state.assign(0, [AccountState(account_id="old", seen_event_ids=["x"])])
    state.assign(1, [])
    assert state.is_duplicate(0, "old", "x")
    assert not state.is_duplicate(1, "old", "x")
    state.record(0, "new", "e1", 10)
    state.record(0, "new", "e2", 20)
    state.record(1, "other", "e3", 30)
    changes = state.take_changes()
    assert sorted((c.partition, c.state.account_id) for c in changes) == [(0, "new"), (1, "other")]
    new_state = next(c.state for c in changes if c.state.account_id == "new")
    assert list(new_state.seen_event_ids) == ["e1", "e2"]
    assert state.take_changes() == []


def test_dropped_partition_must_be_restored_before_use() -> None:
    state = DetectorState(StateLimits(velocity_window_ms=1_000))
    state.assign(3, [])
    state.record(3, "acct", "e1", 1)
    state.drop(3)
    assert state.partitions == []
    with pytest.raises(StateNotRestored):
        state.is_duplicate(3, "acct", "e1")
