"""`txguard model train` and `txguard evaluate`: the handbook's protocol on txguard's pipeline.

`evaluate` replays the protocol's period of a dataset (by default the simulator's) through the
real pipeline (`txguard replay`), so the models are trained and tested on the features the
detector computed in streaming, then trains each model kind on the training week, scores the test
week through the saved artifacts (the files the detector loads) and prints the handbook's metrics
beside its published results.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from txguard.config import Settings
from txguard.fraud.features import ALL_FEATURES, HANDBOOK_FEATURES, TERMINAL_DELAY_DAYS, WINDOW_DAYS
from txguard.fraud.models.evaluation import (
    DEFAULT_DELAY_DAYS,
    DEFAULT_TEST_DAYS,
    DEFAULT_TRAIN_END,
    DEFAULT_TRAIN_START,
    EvaluationError,
    test_window,
)
from txguard.fraud.models.offline import (
    HANDBOOK_KINDS,
    OfflineEvaluation,
    run_offline_evaluation,
    with_reference_features,
)
from txguard.fraud.models.training import TUNED_PARAMETERS, TrainingError, train_models
from txguard.kafka.session import KafkaUnavailable
from txguard.replay.runner import ReplayError, ReplayOptions, replay
from txguard.simulate.dataset import DatasetError, read_dataset
from txguard.simulate.handbook import SimulationConfig, simulate

FEATURE_SETS = {"handbook": HANDBOOK_FEATURES, "all": ALL_FEATURES}
# Features of a transaction at t reach back this far: the terminal delay plus the longest window.
HISTORY_DAYS = TERMINAL_DELAY_DAYS + max(WINDOW_DAYS) + 1


@dataclass(frozen=True)
class ProtocolOptions:
    """Which data, which features, which models, which window."""

    input: Path | None  # None: the simulator's default run
    feature_set: str = "handbook"
    kinds: Sequence[str] = HANDBOOK_KINDS
    train_start: date = DEFAULT_TRAIN_START
    train_end: date = DEFAULT_TRAIN_END
    seed: int = 0
    # txguard's hyper-parameters (TUNED_PARAMETERS) instead of the handbook's defaults.
    tuned: bool = False

    @property
    def feature_names(self) -> tuple[str, ...]:
        return FEATURE_SETS[self.feature_set]

    @property
    def parameters(self) -> dict[str, dict[str, Any]] | None:
        return TUNED_PARAMETERS if self.tuned else None


def run_train_command(settings: Settings, options: ProtocolOptions, output: Path) -> int:
    """Train on the window with features computed in batch (equal to the pipeline's: tested)."""
    try:
        dataset = _dataset(options)
        frame = with_reference_features(dataset, options.feature_names)
        artifacts = train_models(
            frame,
            train_start=options.train_start,
            train_end=options.train_end,
            kinds=options.kinds,
            feature_names=options.feature_names,
            output=output,
            seed=options.seed,
            parameters=options.parameters,
        )
    except (DatasetError, TrainingError, EvaluationError, ValueError) as exc:
        print(f"txguard model train: {exc}", file=sys.stderr)
        return 2
    for kind, path in artifacts.items():
        print(f"{kind}: {path}")
    print(f"summary: {output / 'summary.json'}")
    return 0


def run_evaluate_command(
    settings: Settings,
    options: ProtocolOptions,
    *,
    json_output: Path | None,
    through_pipeline: bool = True,
) -> int:
    try:
        dataset = protocol_period(_dataset(options), options.train_start, options.train_end)
        if through_pipeline:
            dataset = _replayed(settings, dataset)
        evaluation = run_offline_evaluation(
            dataset,
            options.feature_names,
            options.kinds,
            train_start=options.train_start,
            train_end=options.train_end,
            seed=options.seed,
            parameters=options.parameters,
            # Tuned models are compared with the handbook's tuned (prequential) results.
            reference="prequential_tuned" if options.tuned else "one_split_defaults",
        )
    except (DatasetError, TrainingError, EvaluationError, ReplayError, KafkaUnavailable) as exc:
        print(f"txguard evaluate: {exc}", file=sys.stderr)
        return 1
    print(_heading(evaluation, options, through_pipeline))
    print(evaluation.table())
    result = {
        **evaluation.to_dict(),
        "features_from": "pipeline" if through_pipeline else "batch",
        "feature_set": options.feature_set,
        "parameters": "tuned" if options.tuned else "handbook defaults",
    }
    if json_output is not None and str(json_output) == "-":
        print(json.dumps(result, indent=2))
    elif json_output is not None:
        json_output.parent.mkdir(parents=True, exist_ok=True)
        json_output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {json_output}")
    return 0


def protocol_period(dataset: pd.DataFrame, train_start: date, train_end: date) -> pd.DataFrame:
    """The rows the protocol needs: the test week's end, back to the training week's start less
    the history its features read."""
    _, test_end = test_window(
        train_end=train_end, delay_days=DEFAULT_DELAY_DAYS, test_days=DEFAULT_TEST_DAYS
    )
    first = pd.Timestamp(train_start - timedelta(days=HISTORY_DAYS))
    after_last = pd.Timestamp(test_end + timedelta(days=1))
    times = pd.to_datetime(dataset["TX_DATETIME"])
    period = dataset[(times >= first) & (times < after_last)]
    if period.empty:
        raise EvaluationError(
            f"the dataset has no transactions between {first.date()} and {test_end}"
        )
    return period


def _dataset(options: ProtocolOptions) -> pd.DataFrame:
    if options.input is None:
        return simulate(SimulationConfig(seed=options.seed))
    frame = read_dataset(options.input)
    if "TX_FRAUD" not in frame.columns:
        raise DatasetError(f"{options.input}: training and evaluation need the TX_FRAUD column")
    return frame


def _replayed(settings: Settings, dataset: pd.DataFrame) -> pd.DataFrame:
    """The dataset's rows with the features the pipeline computed for them."""
    from txguard.simulate.dataset import write_dataset

    with tempfile.TemporaryDirectory(prefix="txguard-evaluate-") as scratch:
        source = Path(scratch) / "dataset.parquet"
        scored = Path(scratch) / "replayed.parquet"
        write_dataset(dataset, source)
        result = replay(settings, ReplayOptions(input=source, output=scored))
        print(
            f"replayed {result.transactions:,} transactions through the pipeline in "
            f"{result.seconds:.0f} s",
            flush=True,
        )
        frame = pd.read_parquet(scored)
    rejected = frame["OUTCOME"] == "DEAD_LETTERED"
    if rejected.any():
        print(f"leaving out {int(rejected.sum())} dead-lettered transactions", file=sys.stderr)
    return frame[~rejected].reset_index(drop=True)


def _heading(evaluation: OfflineEvaluation, options: ProtocolOptions, pipeline: bool) -> str:
    source = "features from the pipeline" if pipeline else "features computed in batch"
    return (
        f"handbook protocol: train {evaluation.train_start}..{evaluation.train_end}, test "
        f"{evaluation.test_start}..{evaluation.test_end} ({evaluation.test_transactions:,} "
        f"transactions, {evaluation.test_frauds:,} frauds); {len(options.feature_names)} "
        f"features ({options.feature_set}), {source}, "
        f"{'tuned parameters' if options.tuned else 'handbook defaults'}"
    )
