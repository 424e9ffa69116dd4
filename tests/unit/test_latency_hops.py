"""Each transaction's end-to-end latency split at its two Kafka records, and the report's table."""

from __future__ import annotations

from typing import Any

from txguard.bench.latency_hops import HOPS, hop_latencies
from txguard.bench.report import markdown

# accepted, decided and applied in microseconds; the records' times in milliseconds.
ROWS = [
    ("tx-1", 1_000_000, 1_004_500, 1_010_000),
    ("tx-2", 2_000_000, 2_003_000, 2_020_000),
    ("tx-3", 3_000_000, 3_002_000, 3_006_000),
]
RELAYED_MS = {"tx-1": 1_002, "tx-2": 2_001, "tx-3": 3_001}
DECISION_PRODUCED_MS = {"tx-1": 1_005, "tx-2": 2_004, "tx-3": 3_003}


def test_each_transaction_is_split_into_hops_that_add_up_to_its_latency() -> None:
    hops = hop_latencies(ROWS, RELAYED_MS, DECISION_PRODUCED_MS)
    assert hops["transactions"] == 3
    # tx-1: 2.0, 2.5, 0.5, 5.0 ms; tx-2: 1.0, 2.0, 1.0, 16.0 ms; tx-3: 1.0, 1.0, 1.0, 3.0 ms.
    assert [hops[key]["p50"] for key, _ in HOPS] == [1.0, 2.0, 1.0, 5.0]
    assert [hops[key]["max"] for key, _ in HOPS] == [2.0, 2.5, 1.0, 16.0]
    total = sum(hops[key]["mean"] for key, _ in HOPS)
    assert abs(total - (10.0 + 20.0 + 6.0) / 3) < 0.01


def test_transactions_without_both_records_are_left_out() -> None:
    hops = hop_latencies(ROWS, {"tx-1": 1_002, "tx-2": 2_001}, {"tx-2": 2_004, "tx-3": 3_003})
    assert hops["transactions"] == 1
    assert hops["decision_produced_to_applied_ms"]["max"] == 16.0
    assert hop_latencies(ROWS, {}, DECISION_PRODUCED_MS) == {"transactions": 0}


def _e2e(hops: dict[str, Any] | None) -> dict[str, Any]:
    run: dict[str, Any] = {
        "mode": "batch",
        "offered_per_s": 2000.0,
        "accepted_per_s": 1999.0,
        "applied_per_s": 1999.0,
        "accepted_to_applied_ms": {"p99": 40.0},
        "missing": 0,
        "duplicate_decisions": 0,
    }
    if hops is not None:
        run["hops"] = hops
    return {"end_to_end": {"fixed": {"batch@2000": run}}, "targets": []}


def test_the_report_shows_p50_and_p99_of_each_hop_per_run() -> None:
    text = markdown(_e2e(hop_latencies(ROWS, RELAYED_MS, DECISION_PRODUCED_MS)))
    assert "### Latency by hop, p50 / p99 ms" in text
    lines = text.splitlines()
    header = lines.index("| run | transactions | " + " | ".join(label for _, label in HOPS) + " |")
    row = "| batch@2000 | 3 | 1.0 / 2.0 | 2.0 / 2.5 | 1.0 / 1.0 | 5.0 / 15.8 |"
    assert lines[header + 2] == row


def test_runs_measured_without_hops_show_no_hop_table() -> None:
    assert "Latency by hop" not in markdown(_e2e(None))


def test_a_hop_that_rounds_to_zero_from_below_reads_zero() -> None:
    # A decision produced within the millisecond it was decided: its record's whole-millisecond
    # time can fall just before the decision's own microsecond time.
    hops = {
        "transactions": 1,
        **{key: {"count": 1, "p50": 1.0, "p99": 1.0} for key, _ in HOPS},
        "decided_to_decision_produced_ms": {"count": 1, "p50": -0.04, "p99": -0.04},
    }
    text = markdown(_e2e(hops))
    assert "| batch@2000 | 1 | 1.0 / 1.0 | 1.0 / 1.0 | 0.0 / 0.0 | 1.0 / 1.0 |" in text
