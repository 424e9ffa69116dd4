"""`txguard replay` through the real broker at full speed: the streaming features equal the batch
reference for every transaction, and the same input gives the same output file."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from txguard.fraud.features import HANDBOOK_FEATURES, TXGUARD_FEATURES
from txguard.fraud.reference_features import compute_reference_features
from txguard.simulate.dataset import read_dataset, write_dataset
from txguard.simulate.handbook import SimulationConfig, simulate

pytestmark = pytest.mark.integration


def run_replay(env: dict[str, str], dataset: Path, output: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "txguard",
            "replay",
            "--input",
            str(dataset),
            "--output",
            str(output),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_streaming_features_equal_the_batch_reference_for_every_transaction(
    tmp_path: Path, txguard_env: dict[str, str]
) -> None:
    # 45 days and over 100,000 transactions: every window, the terminal delay and label delays.
    frame = simulate(SimulationConfig(customers=1500, terminals=3000, days=45, seed=5))
    assert len(frame) >= 100_000
    dataset = tmp_path / "dataset.parquet"
    write_dataset(frame, dataset)
    output = tmp_path / "replayed.parquet"
    run_replay(txguard_env, dataset, output)

    replayed = pd.read_parquet(output).set_index("TRANSACTION_ID").sort_index()
    reference = (
        compute_reference_features(read_dataset(dataset)).set_index("TRANSACTION_ID").sort_index()
    )
    assert replayed.index.equals(reference.index)
    assert set(replayed["OUTCOME"]) <= {"APPROVE", "REVIEW", "DECLINE"}
    assert replayed["SCORE"].between(0.0, 1.0).all()
    for name in (*HANDBOOK_FEATURES, *TXGUARD_FEATURES):
        difference = np.abs(replayed[name].to_numpy(float) - reference[name].to_numpy(float))
        worst = int(np.argmax(difference))
        assert difference[worst] <= 1e-6, (
            f"{name} differs for TRANSACTION_ID {replayed.index[worst]}: streaming "
            f"{replayed[name].iloc[worst]} vs reference {reference[name].iloc[worst]}"
        )
    # The terminal features are not trivially zero: labels reached the table in time.
    assert (replayed["TERMINAL_ID_RISK_30DAY_WINDOW"] > 0).sum() > 1_000

    again = tmp_path / "replayed-again.parquet"
    run_replay(txguard_env, dataset, again)
    assert (
        hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(output.read_bytes()).digest()
    )
