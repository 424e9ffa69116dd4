"""The benchmark's stack profiles: shares per function from py-spy's collapsed stacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from txguard.bench.profile import summarise
from txguard.bench.report import README_BEGIN, README_END, ReadmeError, markdown, update_readme

COLLAPSED = "\n".join(
    [
        'process 7:"python -m txguard serve detector";<module> (/x/src/txguard/__main__.py:3);'
        "run (/x/src/txguard/fraud/detector.py:180);"
        "process_batch (/x/src/txguard/fraud/detector.py:230);"
        "observe_batch (/x/src/txguard/fraud/feature_batch.py:190) 60",
        'process 7:"python -m txguard serve detector";<module> (/x/src/txguard/__main__.py:3);'
        "run (/x/src/txguard/fraud/detector.py:180);"
        "process_batch (/x/src/txguard/fraud/detector.py:240);"
        "searchsorted (/v/site-packages/numpy/_core/fromnumeric.py:1500) 30",
        'process 7:"python -m txguard serve detector";<module> (/x/src/txguard/__main__.py:3);'
        "run (/x/src/txguard/fraud/detector.py:181) 10",
        "not a sample line",
    ]
)


def test_shares_are_per_function_with_lines_merged() -> None:
    summary = summarise(COLLAPSED)
    assert summary["samples"] == 100
    inclusive = {e["function"]: e["share"] for e in summary["inclusive"]}
    assert inclusive["process_batch (txguard/fraud/detector.py)"] == 0.9
    # Every sample passes the entry points: they say nothing and are left out.
    assert "run (txguard/fraud/detector.py)" not in inclusive
    assert inclusive["observe_batch (txguard/fraud/feature_batch.py)"] == 0.6
    # Inclusive shares list txguard's own functions; self shares any innermost frame.
    assert not any("numpy" in name for name in inclusive)
    innermost = {e["function"]: e["share"] for e in summary["self"]}
    assert innermost == {
        "observe_batch (txguard/fraud/feature_batch.py)": 0.6,
        "searchsorted (fromnumeric.py)": 0.3,
        "run (txguard/fraud/detector.py)": 0.1,
    }


def test_no_samples_summarise_to_empty_lists() -> None:
    assert summarise("") == {"samples": 0, "inclusive": [], "self": []}


def test_the_report_shows_each_profile_or_why_there_is_none() -> None:
    results = {
        "detector": {"profile": {"process": "detector", **summarise(COLLAPSED)}},
        "end_to_end": {
            "runs": [
                {"name": "stream@2000", "profiles": [{"process": "applier", "error": "denied"}]}
            ]
        },
    }
    text = markdown(results)
    assert "## Where the time goes" in text
    assert "### detector: detector (100 samples)" in text
    assert "90.0% `process_batch (txguard/fraud/detector.py)`" in text
    assert "### end_to_end / runs / stream@2000: applier" in text
    assert "No profile: denied" in text


def test_the_readme_block_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{README_BEGIN}\nold table\n{README_END}\n\nafter\n")
    results = {
        "meta": {"started_at": "2026-11-29T07:00:00+00:00", "git": {"commit": "abcdef1234567"}},
        "targets": [
            {
                "id": "t",
                "description": "detector over peer",
                "op": ">=",
                "value": 3,
                "unit": "ratio",
                "measured": 3.5,
                "status": "met",
                "gap": None,
            }
        ],
        "plot": "latency-vs-load.png",
    }
    update_readme(readme, results, tmp_path / "benchmarks" / "results")
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old table" not in text
    assert "| detector over peer | ≥ 3.00 ratio | 3.500 | met | - |" in text
    assert "![latency against offered load](benchmarks/results/latency-vs-load.png)" in text
    update_readme(readme, results, tmp_path / "benchmarks" / "results")
    assert readme.read_text() == text  # a second run replaces its own block


def test_a_readme_without_the_block_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    with pytest.raises(ReadmeError, match="no results block"):
        update_readme(readme, {}, tmp_path)


def test_a_scaling_run_without_a_window_says_why() -> None:
    def run(instances: int, throughput: float | None, undecided: int) -> dict[str, object]:
        return {
            "instances": instances,
            "throughput_per_s": throughput,
            "undecided_at_complete": undecided,
            "rebalances": [],
            "duplicates": 0,
        }

    results = {"scaling": {"runs": {"1": run(1, 19_000.0, 539_000), "3": run(3, None, 0)}}}
    text = markdown(results)
    assert "| 1 | 19,000 |" in text
    assert "- 3 instances: every transaction was decided before the group was complete" in text
    assert "- 1 instances" not in text
