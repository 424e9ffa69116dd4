"""Offline evaluation end to end: features, training, artifacts, protocol test set, comparison.

`run_offline_evaluation` reproduces the handbook's benchmark on a transactions table (for
example `txguard.simulate.handbook.simulate(SimulationConfig())`): it computes the reference
features when they are not there yet, trains the requested kinds on the training window,
scores the protocol's test set through the saved artifacts (so the numbers are those of the
models the detector would load) and compares them with the handbook's published results.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from txguard.fraud.features import HANDBOOK_FEATURES
from txguard.fraud.models.artifact import load_model
from txguard.fraud.models.evaluation import (
    DEFAULT_DELAY_DAYS,
    DEFAULT_TEST_DAYS,
    DEFAULT_TRAIN_END,
    DEFAULT_TRAIN_START,
    comparison,
    evaluate_scores,
    format_comparison,
    test_set,
    test_window,
)
from txguard.fraud.models.training import train_models
from txguard.fraud.reference_features import compute_reference_features

HANDBOOK_KINDS = ("logistic_regression", "random_forest", "xgboost")


@dataclass(frozen=True)
class ModelResult:
    """One model's test metrics and what produced them."""

    kind: str
    version: str
    metrics: Mapping[str, float]
    fit_seconds: float
    predict_seconds: float


@dataclass(frozen=True)
class OfflineEvaluation:
    """The results of one run of the protocol, with the handbook's numbers beside them."""

    feature_names: tuple[str, ...]
    train_start: date
    train_end: date
    test_start: date
    test_end: date
    test_transactions: int
    test_frauds: int
    results: Mapping[str, ModelResult]
    reference: str = "one_split_defaults"

    def comparison(self) -> dict[str, Any]:
        return comparison(
            {kind: result.metrics for kind, result in self.results.items()},
            reference=self.reference,
        )

    def table(self) -> str:
        return format_comparison(self.comparison())

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names),
            "training_window": {
                "start": self.train_start.isoformat(),
                "end": self.train_end.isoformat(),
            },
            "test_window": {"start": self.test_start.isoformat(), "end": self.test_end.isoformat()},
            "test_transactions": self.test_transactions,
            "test_frauds": self.test_frauds,
            "results": {
                kind: {
                    "version": result.version,
                    "metrics": dict(result.metrics),
                    "fit_seconds": round(result.fit_seconds, 3),
                    "predict_seconds": round(result.predict_seconds, 3),
                }
                for kind, result in self.results.items()
            },
            "comparison": self.comparison(),
        }


def with_reference_features(
    transactions: pd.DataFrame, feature_names: Sequence[str]
) -> pd.DataFrame:
    """`transactions` plus the reference features, unless all of `feature_names` are there."""
    if all(name in transactions.columns for name in feature_names):
        return transactions
    features = compute_reference_features(transactions)
    extra = [name for name in features.columns if name not in transactions.columns]
    return transactions.join(features[extra])


def run_offline_evaluation(
    dataset: pd.DataFrame,
    feature_names: Sequence[str] = HANDBOOK_FEATURES,
    kinds: Sequence[str] = HANDBOOK_KINDS,
    *,
    train_start: date = DEFAULT_TRAIN_START,
    train_end: date = DEFAULT_TRAIN_END,
    delay_days: int = DEFAULT_DELAY_DAYS,
    test_days: int = DEFAULT_TEST_DAYS,
    parameters: Mapping[str, Mapping[str, Any]] | None = None,
    output: Path | None = None,
    seed: int = 0,
    reference: str = "one_split_defaults",
) -> OfflineEvaluation:
    """Train `kinds` on `dataset` and evaluate them with the handbook's protocol.

    Artifacts go to `output` (kept) or to a temporary directory (removed afterwards).
    """
    frame = with_reference_features(dataset, feature_names)
    test = test_set(
        frame,
        train_start=train_start,
        train_end=train_end,
        delay_days=delay_days,
        test_days=test_days,
    )
    test_inputs = test[list(feature_names)].to_numpy(dtype=np.float64)
    first, last = test_window(train_end=train_end, delay_days=delay_days, test_days=test_days)

    with tempfile.TemporaryDirectory(prefix="txguard-models-") as scratch:
        directory = Path(output) if output is not None else Path(scratch)
        artifacts = train_models(
            frame,
            train_start=train_start,
            train_end=train_end,
            kinds=kinds,
            feature_names=feature_names,
            output=directory,
            seed=seed,
            parameters=parameters,
            delay_days=delay_days,
            test_days=test_days,
        )
        results = {}
        for kind, path in artifacts.items():
            model = load_model(path)
            started = time.perf_counter()
            scores = model.predict(test_inputs)
            predict_seconds = time.perf_counter() - started
            fit_seconds = 0.0
            if model.metadata is not None:
                fit_seconds = float(model.metadata.parameters.get("fit_seconds", 0.0))
            results[kind] = ModelResult(
                kind=kind,
                version=model.version,
                metrics=evaluate_scores(test, scores),
                fit_seconds=fit_seconds,
                predict_seconds=predict_seconds,
            )
    return OfflineEvaluation(
        feature_names=tuple(feature_names),
        train_start=train_start,
        train_end=train_end,
        test_start=first,
        test_end=last,
        test_transactions=len(test),
        test_frauds=int(test["TX_FRAUD"].sum()),
        results=results,
        reference=reference,
    )
