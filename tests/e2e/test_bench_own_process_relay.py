"""The end-to-end benchmark with the outbox relay in a process of its own (`--relay own-process`):
`serve transactions --no-relay` beside `serve relay`, woken by the store's outbox bell.

Performance is recorded by the harness, never asserted here: this checks the deployment decides
every transaction exactly once and that the report says where the relay ran.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from txguard.bench.end_to_end import RELAY_PLACES
from txguard.bench.report import RESULTS_JSON, RESULTS_MARKDOWN
from txguard.bench.runner import SMOKE, BenchOptions, run_bench
from txguard.cli import build_parser
from txguard.config import Settings

pytestmark = pytest.mark.integration


def test_the_relay_in_its_own_process_decides_every_transaction_once(
    tmp_path: Path, txguard_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env(txguard_env)
    output = tmp_path / "results"
    sizes = dataclasses.replace(SMOKE, e2e_modes=("batch",), e2e_step_rates=(100.0,))

    code = run_bench(
        settings,
        BenchOptions(
            scenarios=["e2e"], output_dir=output, sizes=sizes, smoke=True, relay="own-process"
        ),
    )

    printed = capsys.readouterr().out
    assert code == 0, printed
    results = json.loads((output / RESULTS_JSON).read_text())
    assert results["meta"]["command"] == "txguard bench --smoke --relay own-process"
    e2e = results["end_to_end"]
    assert e2e["relay"] == "own-process"
    # The relay stops after the API, so that everything accepted is published; all drained.
    assert e2e["services"] == ["transactions", "relay", "detector", "terminal-risk", "applier"]
    assert set(e2e["exit_codes"].values()) == {0}
    runs = [*e2e["fixed"].values(), *e2e["step_up"]["steps"]]
    assert runs
    for run in runs:
        assert run["accepted"] > 0
        assert run["missing"] == 0
        assert run["exactly_one_applied"]
        assert run["hops"]["transactions"] == run["accepted"]
        assert "relay" in run["usage"]  # measured like every other service
    report = (output / RESULTS_MARKDOWN).read_text()
    assert "The outbox relay runs in a process of its own" in report


def test_an_unknown_relay_place_is_a_usage_mistake(
    tmp_path: Path, txguard_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env(txguard_env)
    code = run_bench(settings, BenchOptions(output_dir=tmp_path, relay="elsewhere"))
    assert code == 2
    assert "unknown relay place 'elsewhere'" in capsys.readouterr().err
    assert not (tmp_path / RESULTS_JSON).exists()
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["bench", "--relay", "elsewhere"])
    assert exit_info.value.code == 2
    for place in RELAY_PLACES:  # the command line offers every place the harness knows
        assert build_parser().parse_args(["bench", "--relay", place]).relay == place
