"""`txguard model train` and `txguard evaluate` from the command line, on a small dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from txguard.fraud.models.artifact import load_model
from txguard.simulate.dataset import write_dataset
from txguard.simulate.handbook import SimulationConfig, simulate

pytestmark = pytest.mark.integration


def txguard(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "txguard", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The protocol's period (training 2018-07-25..31, test 2018-08-08..14) and its history.
    frame = simulate(
        SimulationConfig(
            customers=300, terminals=600, days=67, start_date=date(2018, 6, 10), seed=3
        )
    )
    path = tmp_path_factory.mktemp("evaluate") / "small.parquet"
    write_dataset(frame, path)
    return path


def test_evaluate_runs_the_protocol_through_the_pipeline(
    tmp_path: Path, txguard_env: dict[str, str], dataset: Path
) -> None:
    result_file = tmp_path / "evaluation.json"
    done = txguard(
        txguard_env,
        "evaluate",
        "--input", str(dataset),
        "--kinds", "logistic_regression,random_forest",
        "--features", "all",
        "--json", str(result_file),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replayed" in done.stdout and "logistic_regression" in done.stdout
    result = json.loads(result_file.read_text())
    assert result["features_from"] == "pipeline"
    assert result["test_window"] == {"start": "2018-08-08", "end": "2018-08-14"}
    assert result["test_transactions"] > 1_000
    assert set(result["results"]) == {"logistic_regression", "random_forest"}
    for model in result["results"].values():
        metrics = model["metrics"]
        assert 0.5 < metrics["auc_roc"] <= 1.0
        assert 0.0 < metrics["average_precision"] <= 1.0
        assert 0.0 <= metrics["card_precision_at_100"] <= 1.0


def test_model_train_writes_loadable_artifacts(tmp_path: Path, dataset: Path) -> None:
    output = tmp_path / "models"
    done = txguard(
        dict(os.environ),
        "model", "train",
        "--input", str(dataset),
        "--output", str(output),
        "--kinds", "logistic_regression,xgboost,isolation_forest",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for kind in ("logistic_regression", "xgboost", "isolation_forest"):
        model = load_model(output / kind)
        assert model.kind == kind
        assert len(model.feature_names) == 15
    assert (output / "summary.json").is_file()


def test_training_without_labels_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text(
        "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT\n"
        "0,2018-07-25 10:00:00,1,2,10.50\n"
    )
    done = txguard(
        dict(os.environ),
        "model", "train", "--input", str(unlabelled), "--output", str(tmp_path / "m"),
    )  # fmt: skip
    assert done.returncode == 2
    assert "TX_FRAUD" in done.stderr
