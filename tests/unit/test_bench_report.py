"""The benchmark report: targets judged and shown without rounding a miss into a pass, and the
passthrough ceiling of the ratios measured twice."""

from __future__ import annotations

from typing import Any

from txguard.bench.report import evaluate_targets, markdown

RATIO_TARGET: dict[str, Any] = {
    "id": "detector-vs-passthrough",
    "description": "detector throughput as a share of the passthrough ceiling",
    "metric": "detector.ratio_to_passthrough",
    "op": ">=",
    "value": 0.5,
    "unit": "ratio",
}
LATENCY_TARGET: dict[str, Any] = {
    "id": "p99",
    "description": "p99 at 2,000 tx/s",
    "metric": "end_to_end.fixed.batch@2000.accepted_to_applied_ms.p99",
    "op": "<=",
    "value": 25,
    "unit": "ms",
}


def _passthrough(rate: float) -> dict[str, Any]:
    return {
        "records": 1_000_000,
        "batch_size": 500,
        "throughput_per_s": rate,
        "cpu_percent": 65.0,
        "cpu_us_per_record": 5.4,
    }


def _rows(text: str) -> dict[str, list[str]]:
    """The report's table rows by their first cell, as lists of the other cells."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| "):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _results(detector_rate: float, before: float, after: float) -> dict[str, Any]:
    ceiling = (before + after) / 2
    return {
        "ceiling": {"passthrough": _passthrough(before)},
        "detector": {
            "decisions": 539_820,
            "throughput_per_s": detector_rate,
            "passthrough_after": _passthrough(after),
            "passthrough_ceiling_per_s": ceiling,
            "ratio_to_passthrough": round(detector_rate / ceiling, 3),
            "exactly_once": True,
        },
    }


def test_a_ratio_just_short_of_its_target_is_not_met_and_reads_short() -> None:
    results = _results(58_791.0, 119_192.0, 117_919.0)
    [target] = evaluate_targets(results, [RATIO_TARGET])
    assert target["measured"] == 0.496
    assert target["status"] == "not met"
    assert target["gap"] == 0.004
    text = markdown({**results, "targets": [target]})
    row = _rows(text)[RATIO_TARGET["description"]]
    assert row == ["≥ 0.50 ratio", "0.496", "not met", "0.004"]


def test_a_ratio_at_its_target_is_met() -> None:
    [target] = evaluate_targets(_results(60_000.0, 120_000.0, 120_000.0), [RATIO_TARGET])
    assert (target["status"], target["gap"]) == ("met", 0.0)


def test_a_latency_above_its_bound_is_not_met_with_the_excess_as_gap() -> None:
    results = {"end_to_end": {"fixed": {"batch@2000": {"accepted_to_applied_ms": {"p99": 62.84}}}}}
    [target] = evaluate_targets(results, [LATENCY_TARGET])
    assert (target["status"], target["gap"]) == ("not met", 37.84)
    [missing] = evaluate_targets({}, [LATENCY_TARGET])
    assert (missing["status"], missing["gap"]) == ("not measured", None)


def test_both_passthrough_runs_are_shown_against_their_mean() -> None:
    results = _results(60_000.0, 110_000.0, 130_000.0)
    text = markdown({**results, "targets": evaluate_targets(results, [RATIO_TARGET])})
    rows = _rows(text)
    # records/s, then the share of the mean (120,000).
    before = rows["ceiling: consume -> produce passthrough (batches of 500)"]
    after = rows["the same passthrough again, right after the detector (batches of 500)"]
    detector = rows["txguard detector (1 process)"]
    assert before[1:3] == ["110,000", "0.917"]
    assert after[1:3] == ["130,000", "1.083"]
    assert detector[1:3] == ["60,000", "0.500"]
    assert "mean of the two passthrough runs (120,000 records/s)" in text


def test_without_a_second_passthrough_the_ceiling_is_the_one_run() -> None:
    results = {
        "ceiling": {"passthrough": _passthrough(100_000.0)},
        "detector": {"decisions": 10, "throughput_per_s": 40_000.0, "ratio_to_passthrough": 0.4},
    }
    text = markdown({**results, "targets": []})
    assert _rows(text)["ceiling: consume -> produce passthrough (batches of 500)"][2] == "1.000"
    assert "mean of the two passthrough runs" not in text


def _pipeline_run(cpu_ms: float) -> dict[str, Any]:
    return {
        "offered_per_s": 2_000.0,
        "accepted_per_s": 1_999.0,
        "applied_per_s": 1_999.0,
        "accepted_to_applied_ms": {"p99": 225.8},
        "api_ms": {"p99": 672.6},
        "missing": 0,
        "duplicate_decisions": 0,
        "sustained": False,
        "per_transaction": {"cpu_ms": cpu_ms, "context_switches": 22.7, "kernel_share": 0.3},
    }


def _floor_run(server_us: float, client_us: float) -> dict[str, Any]:
    return {
        "accepted_per_s": 1_998.5,
        "api_ms": {"count": 19_985, "p50": 0.79, "p99": 19.27},
        "usage": {"server": {"cpu_percent": 76.8}, "load-generator": {"cpu_percent": 64.0}},
        "cpu_us_per_transaction": {"server": server_us, "load-generator": client_us},
    }


def test_the_grpc_floor_is_shown_as_a_share_of_the_pipelines_cpu_per_transaction() -> None:
    e2e = {
        "fixed": {"unary@2000": _pipeline_run(0.9)},
        "grpc_floor": {
            "runs": {"unary@2000": _floor_run(384.0, 336.0), "unary@9000": _floor_run(1.0, 1.0)}
        },
    }
    text = markdown({"end_to_end": e2e, "targets": []})
    floor = _rows(text[text.index("### The gRPC floor") :])
    # (384 + 336) µs of the pipeline's 900 µs per transaction.
    assert floor["unary@2000"] == ["1,998", "0.8 / 19.3", "384.0 (77%)", "336.0 (64%)", "80%"]
    # A load the pipeline was not run at has no share to show.
    assert floor["unary@9000"][-1] == "-"
    assert "### The gRPC floor" not in markdown(
        {"end_to_end": {"fixed": e2e["fixed"]}, "targets": []}
    )
