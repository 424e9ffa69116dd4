"""The benchmark harness at smoke sizes: every scenario runs against the session's broker and
writes results whose numbers make sense (positive throughput, every transaction decided once).

Wall-clock figures are only checked for being positive: performance is recorded by the harness,
never asserted here. The Quix Streams peer needs `.venv-quix`; without it the peer is skipped
and the harness says why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from txguard.bench.latency_hops import HOPS
from txguard.bench.peer import peer_python
from txguard.bench.report import LATENCY_PLOT, RESULTS_JSON, RESULTS_MARKDOWN
from txguard.bench.runner import REPOSITORY, SMOKE, BenchOptions, run_bench
from txguard.config import Settings

pytestmark = pytest.mark.integration


def test_smoke_run_writes_sane_results(
    tmp_path: Path, txguard_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env(txguard_env)
    output = tmp_path / "results"
    peer_available = peer_python(REPOSITORY) is not None

    code = run_bench(settings, BenchOptions(smoke=True, output_dir=output))

    printed = capsys.readouterr().out
    assert code == 0, printed
    assert (output / RESULTS_MARKDOWN).read_text().startswith("# txguard benchmark")
    results = json.loads((output / RESULTS_JSON).read_text())
    if results.get("plot"):
        assert (output / LATENCY_PLOT).stat().st_size > 0
    assert {t["status"] for t in results["targets"]} <= {"met", "not met", "not measured"}

    ceiling = results["ceiling"]
    assert ceiling["produce"]["records"] == SMOKE.ceiling_records
    assert ceiling["produce"]["throughput_per_s"] > 0
    assert ceiling["passthrough"]["records"] == SMOKE.ceiling_records
    assert ceiling["passthrough"]["throughput_per_s"] > 0

    transactions = results["prefill"]["transactions"]
    assert transactions > 1_000
    detector = results["detector"]
    assert detector["exactly_once"]
    assert detector["decided_transactions"] == transactions
    assert detector["duplicates"] == 0
    assert detector["throughput_per_s"] > 0
    # The passthrough is measured again right after the detector; the ratio's ceiling is the
    # mean of both runs.
    after = detector["passthrough_after"]
    assert after["records"] == SMOKE.ceiling_records
    ceiling_rate = (ceiling["passthrough"]["throughput_per_s"] + after["throughput_per_s"]) / 2
    assert detector["passthrough_ceiling_per_s"] == round(ceiling_rate, 1)
    assert detector["ratio_to_passthrough"] == round(detector["throughput_per_s"] / ceiling_rate, 3)
    # Its scores equal those computed from the reference features, on a sample.
    reference = detector["reference_check"]
    assert reference["equal"], reference
    assert reference["compared"] == min(2_000, transactions)
    # Where its time went: py-spy sampled it while it worked.
    profile = detector["profile"]
    assert "error" not in profile, profile
    assert profile["samples"] > 0
    assert any("FraudDetector" in entry["function"] for entry in profile["inclusive"])
    assert "## Where the time goes" in (output / "results.md").read_text()
    assert results["state"]["accounts"] == results["prefill"]["accounts"]
    assert results["state"]["state_bytes_per_account"] > 0

    peer = results["peer"]
    if peer_available:
        assert peer["complete"]
        assert peer["decided_transactions"] == transactions
        assert peer["duplicates"] == 0
        assert peer["throughput_per_s"] > 0
        assert peer["detector_to_peer_ratio"] > 0
        # Same features and same model: every transaction gets the detector's score.
        assert peer["same_scores_as_detector"]["compared"] == transactions
        assert peer["same_scores_as_detector"]["different"] == 0
    else:
        assert "skipped" in peer
        assert "peer skipped" in printed
        print(f"Quix Streams peer skipped: {peer['skipped']}")

    for run in results["scaling"]["runs"].values():
        assert run["decisions_total"] > 0
        assert 0 <= run["undecided_at_complete"] <= run["decisions_total"]
        # The input was held back until every instance had its partitions.
        assert run["decided_before_release"] == 0
        assert run["duplicates"] == 0
        assert all(rebalance["assigned"] for rebalance in run["rebalances"])

    e2e = results["end_to_end"]
    assert e2e["relay"] == "in-process"
    assert (
        "The outbox relay runs inside `serve transactions`"
        in (output / RESULTS_MARKDOWN).read_text()
    )
    runs = [*e2e["fixed"].values(), *e2e["step_up"]["steps"]]
    assert {run["mode"] for run in runs} == {"unary", "stream", "batch"}
    assert all(run["items_per_batch"] for run in runs if run["mode"] == "batch")
    # Every run's processes used CPU and were switched in and out for its transactions.
    assert all(
        run["per_transaction"]["cpu_ms"] > 0 and run["per_transaction"]["context_switches"] > 0
        for run in runs
    )
    # Every transaction's two records were found, and its hops add up to its latency: the means
    # of the hops (over the same transactions) sum to the mean accepted-to-applied latency.
    for run in runs:
        hops = run["hops"]
        assert hops["transactions"] == run["accepted"]
        total = sum(hops[key]["mean"] for key, _ in HOPS)
        assert abs(total - run["accepted_to_applied_ms"]["mean"]) < 0.01
    assert "### Latency by hop" in (output / RESULTS_MARKDOWN).read_text()
    # The gRPC floor: every fixed run's load went to the no-op API too, and all of it was
    # answered, at a cost in CPU to its server and to the load generator.
    floor = e2e["grpc_floor"]["runs"]
    assert set(floor) == set(e2e["fixed"])
    for run in floor.values():
        assert run["errors"] == {}
        assert run["accepted"] == run["sent"] > 0
        assert run["api_ms"]["count"] == run["accepted"]
        assert run["cpu_us_per_transaction"]["server"] > 0
        assert run["cpu_us_per_transaction"]["load-generator"] > 0
    assert "### The gRPC floor" in (output / RESULTS_MARKDOWN).read_text()
    assert results["meta"]["machine"]["wake_up_round_trip_us"] > 0
    # The cluster holds at least txguard's own topics, each with its partitions.
    cluster = results["meta"]["cluster_at_start"]
    assert cluster["partitions"] >= cluster["topics"] >= 7
    assert "CPU ms per transaction" in (output / RESULTS_MARKDOWN).read_text()
    # A run of its own in the latency target's mode was profiled, every service of it; the
    # measured runs were not.
    assert not any("profiles" in run for run in runs)
    profiled = list(e2e["profiled"].values())
    assert [run["mode"] for run in profiled] == [e2e["step_up"]["mode"]]
    services = {profile["process"]: profile for profile in profiled[0]["profiles"]}
    assert {"transactions", "detector", "applier", "terminal-risk"} <= set(services)
    assert all("error" not in profile for profile in services.values()), services
    for run in runs:
        assert run["accepted"] > 0
        assert run["missing"] == 0
        assert run["exactly_one_applied"]
        assert run["decisions_per_transaction_max"] == 1
        assert run["accepted_to_applied_ms"]["count"] == run["accepted"]
        assert run["accepted_to_applied_ms"]["p50"] > 0
        assert run["api_ms"]["count"] == run["accepted"]
        assert {"transactions", "detector", "applier", "load-generator"} <= set(run["usage"])
