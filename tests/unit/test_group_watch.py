"""GroupWatch: how long a consumer's reports have said that its group membership does not work."""

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
    assert watch.stalled_seconds() == 0


def test_reports_of_a_membership_that_does_not_come_back_stall_it_after_the_stall_time() -> None:
    clock = Clock()
    watch = GroupWatch(stall_seconds=90, clock=clock)
    watch.stats_cb(report("up", "steady"))
    clock.now += 10
    for state, join_state in [("query-coord", "steady"), ("query-coord", "init")] * 4:
        watch.stats_cb(report(state, join_state))  # the first at 0 s, the last at 70 s
        clock.now += 10
    clock.now += 9
    assert not watch.stalled(), "89 s of failing reports: a broker restart can take long"
    clock.now += 1
    watch.stats_cb(report("up", "wait-join"))
    assert watch.stalled()
    assert watch.stalled_seconds() == 90
    assert watch.last_state == "up/wait-join"


def test_a_member_that_rejoins_in_time_is_not_stalled() -> None:
    clock = Clock()
    watch = GroupWatch(stall_seconds=90, clock=clock)
    watch.stats_cb(report("up", "wait-sync"))
    clock.now += 85
    watch.stats_cb(report("up", "steady"))
    clock.now += 80
    assert not watch.stalled()


def test_a_loop_busy_elsewhere_is_not_stalled_by_the_time_it_did_not_poll() -> None:
    """No report is served while the loop does not poll; those queued meanwhile come at once."""
    clock = Clock()
    watch = GroupWatch(stall_seconds=90, clock=clock)
    watch.stats_cb(report("up", "steady"))
    clock.now += 300
    assert not watch.stalled()
    for _ in range(30):
        watch.stats_cb(report("up", "steady"))
    watch.stats_cb(report("up", "wait-join"))  # it rejoins now, as polling resumes
    assert not watch.stalled()


def test_without_reports_nothing_is_stalled_and_restart_counts_a_failing_run_from_now() -> None:
    clock = Clock()
    watch = GroupWatch(stall_seconds=90, clock=clock)
    clock.now += 1000
    assert not watch.stalled()
    assert watch.last_state == "not reported yet"
    watch.stats_cb(report("query-coord", "init"))
    clock.now += 90
    assert watch.stalled()
    watch.restart()
    assert not watch.stalled()
    clock.now += 90
    assert watch.stalled()


def test_a_report_without_a_group_or_not_json_changes_nothing() -> None:
    clock = Clock()
    watch = GroupWatch(stall_seconds=90, clock=clock)
    watch.stats_cb(report("up", "wait-join"))
    clock.now += 50
    watch.stats_cb(json.dumps({"client_id": "p", "type": "producer", "brokers": {}}))
    watch.stats_cb("not json")
    clock.now += 40
    assert watch.stalled()
