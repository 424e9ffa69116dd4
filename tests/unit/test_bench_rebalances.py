"""The scaling scenario's handover times, read from the detectors' logs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from txguard.bench.detector_bench import rebalance_timings

START = 1_800_000_000.0


def write_log(path: Path, lines: list[tuple[float, str]]) -> Path:
    path.write_text(
        "".join(
            json.dumps(
                {
                    "time": datetime.fromtimestamp(START + at, UTC).isoformat(),
                    "level": "INFO",
                    "message": message,
                }
            )
            + "\n"
            for at, message in lines
        )
    )
    return path


def assigned(partitions: str) -> str:
    return f"assigned partitions [{partitions}]; restored 10 account states in 0.25 s"


def test_instances_started_together_hand_over_from_whichever_was_assigned_first(
    tmp_path: Path,
) -> None:
    # Instance 2 is assigned first and takes every partition; the others join later.
    logs = [
        write_log(tmp_path / "1.log", [(14.0, assigned("0, 1"))]),
        write_log(
            tmp_path / "2.log",
            [(10.0, assigned("0, 1, 2, 3, 4, 5")), (12.5, "revoked partitions [0, 1, 2, 3]")],
        ),
        write_log(tmp_path / "3.log", [(15.0, assigned("2, 3"))]),
    ]

    timings = rebalance_timings(logs, [START, START + 0.1, START + 0.2])

    assert [t["instance"] for t in timings] == [1, 3]
    assert [t["handover_seconds"] for t in timings] == [1.5, 2.5]
    assert [t["partitions"] for t in timings] == [[0, 1], [2, 3]]
    assert [t["start_to_assigned_seconds"] for t in timings] == [14.0, 14.8]
    assert all(t["restore_seconds"] == 0.25 for t in timings)


def test_an_instance_never_assigned_is_reported(tmp_path: Path) -> None:
    logs = [
        write_log(tmp_path / "1.log", [(10.0, assigned("0, 1"))]),
        write_log(tmp_path / "2.log", []),
    ]
    assert rebalance_timings(logs, [START, START]) == [{"instance": 2, "assigned": False}]


def test_a_revocation_before_an_instance_started_is_not_its_handover(tmp_path: Path) -> None:
    logs = [
        write_log(
            tmp_path / "1.log",
            [(1.0, assigned("0, 1")), (2.0, "revoked partitions [1]")],
        ),
        write_log(tmp_path / "2.log", [(9.0, assigned("1"))]),
    ]
    timings = rebalance_timings(logs, [START, START + 5.0])
    assert timings[0]["handover_seconds"] is None
