"""GroupWatch: how long a consumer's group membership has not worked, from its statistics."""

from __future__ import annotations

import json

from txguard.kafka.group_watch import GroupWatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def report(state: str, join_state: str) -> str:
    """A consumer's statistics report, with the fields GroupWatch and the metrics read."""
    return json.dumps(
        {
            "client_id": "test",
            "type": "consumer",
            "brokers": {},
            "cgrp": {"state": state, "join_state": join_state, "assignment_size": 0},
        }
    )


def test_a_working_member_is_never_stalled_however_long_it_runs() -> None:
    clock = Clock()
    watch = GroupWatch(stall_seconds=90, clock=clock)
    for _ in range(20):
        clock.now += 10
        watch.stats_cb(report("up", "steady"))
        assert not watch.stalled()
    assert watch.last_state == "up/steady"


def test_a_membership_that_does_not_come_back_is_stalled_after_the_stall_time() -> None:
    clock = Clock()
    watch = GroupWatch(stall_seconds=90, clock=clock)
    watch.stats_cb(report("up", "steady"))
    for state, join_state in [("query-coord", "steady"), ("query-coord", "init")] * 4:
        clock.now += 10
        watch.stats_cb(report(state, join_state))
    assert not watch.stalled(), "80 s without working: a broker restart can take that long"
    clock.now += 10
    watch.stats_cb(report("up", "wait-join"))
    assert watch.stalled()
    assert watch.stalled_seconds() == 90
    assert watch.last_state == "up/wait-join"


def test_a_member_that_rejoins_in_time_is_not_stalled() -> None:
    clock = Clock()
    watch = GroupWatch(stall_seconds=90, clock=clock)
    clock.now += 80
    watch.stats_cb(report("up", "wait-sync"))
    clock.now += 5
    watch.stats_cb(report("up", "steady"))
    clock.now += 80
    assert not watch.stalled()


def test_without_any_report_the_watch_counts_from_its_start_and_restart() -> None:
    clock = Clock()
    watch = GroupWatch(stall_seconds=90, clock=clock)
    clock.now += 90
    assert watch.stalled()
    assert watch.last_state == "not reported yet"
    watch.restart()
    assert not watch.stalled()
    clock.now += 90
    assert watch.stalled()


def test_a_report_without_a_group_or_not_json_changes_nothing() -> None:
    clock = Clock()
    watch = GroupWatch(stall_seconds=90, clock=clock)
    clock.now += 50
    watch.stats_cb(json.dumps({"client_id": "p", "type": "producer", "brokers": {}}))
    watch.stats_cb("not json")
    clock.now += 40
    assert watch.stalled()
