"""Training the fraud models on a window of labelled transactions and writing their artifacts.

The supervised models use the handbook's "one split with defaults" set-up: inputs standardised
with a StandardScaler fit on the training set, and LogisticRegression(random_state=seed),
RandomForestClassifier(random_state=seed) and XGBClassifier(random_state=seed) with their
library defaults otherwise (the handbook's n_jobs=-1 becomes `MAX_JOBS`, which does not change
the fitted models; XGBoost gets back the two defaults of its older release, `HANDBOOK_DEFAULTS`).
The isolation forest is fit on the training window's genuine transactions only, so it learns
what normal looks like. `parameters` overrides any of these per kind; `TUNED_PARAMETERS` are
txguard's choices for the full feature set.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from txguard.fraud.models.artifact import (
    FORMAT_VERSION,
    MODEL_KINDS,
    SUPERVISED_KINDS,
    ArtifactInfo,
    Model,
    load_model,
    record_metrics,
    save_blend,
    save_model,
)
from txguard.fraud.models.evaluation import (
    DEFAULT_DELAY_DAYS,
    DEFAULT_TEST_DAYS,
    DEFAULT_TRAIN_END,
    DEFAULT_TRAIN_START,
    EvaluationError,
    auc_roc,
    average_precision,
    evaluate_scores,
    test_set,
    training_set,
)

# The machine's cores are shared; never ask for more than this many threads.
MAX_JOBS: Final = 2
DEFAULT_KINDS: Final = MODEL_KINDS
SUMMARY_FILE: Final = "summary.json"

# The estimator defaults of the XGBoost release the handbook ran with, which XGBoost 2.0
# changed: exact split finding (now "hist", which bins every feature into 256 values) and
# base_score 0.5 (now estimated from the labels). Without them XGBoost's AP falls by ~0.05.
HANDBOOK_DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    "xgboost": {"tree_method": "exact", "base_score": 0.5},
}

# Blend defaults: which supervised model, the anomaly part's weight, and the quantile of the
# training transactions' anomaly scores below which the anomaly part adds nothing.
BLEND_DEFAULTS: Final[dict[str, Any]] = {
    "supervised": "xgboost",
    "weight": 0.05,
    "anomaly_quantile": 0.9,
}

# txguard's hyper-parameters for ALL_FEATURES, chosen on the week before the protocol's
# (train 2018-07-11..17, test 2018-07-25..31) so the protocol's test week stays unseen.
TUNED_PARAMETERS: Final[dict[str, dict[str, Any]]] = {
    "random_forest": {"max_depth": 20},
    "xgboost": {
        "tree_method": "hist",
        "max_bin": 1024,
        "n_estimators": 300,
        "learning_rate": 0.05,
        "max_depth": 4,
    },
    "blend": dict(BLEND_DEFAULTS),
}


class TrainingError(ValueError):
    """Training cannot run as asked (missing feature column, empty window, one class only)."""


def build_estimator(kind: str, *, seed: int, overrides: Mapping[str, Any] | None = None) -> Any:
    """The unfitted estimator of `kind` with the handbook's defaults and `overrides` applied."""
    from sklearn.ensemble import IsolationForest, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from xgboost import XGBClassifier

    settings = dict(overrides or {})
    if "n_jobs" in settings and not 1 <= int(settings["n_jobs"]) <= MAX_JOBS:
        raise TrainingError(f"n_jobs must be between 1 and {MAX_JOBS}")
    if kind == "logistic_regression":
        return LogisticRegression(**{"random_state": seed, **settings})
    if kind == "random_forest":
        return RandomForestClassifier(**{"random_state": seed, "n_jobs": MAX_JOBS, **settings})
    if kind == "xgboost":
        defaults = {"random_state": seed, "n_jobs": MAX_JOBS, **HANDBOOK_DEFAULTS["xgboost"]}
        return XGBClassifier(**{**defaults, **settings})
    if kind == "isolation_forest":
        return IsolationForest(**{"random_state": seed, "n_jobs": MAX_JOBS, **settings})
    raise TrainingError(f"unknown model kind {kind!r}; one of {', '.join(MODEL_KINDS)}")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return str(value)


def _fit(estimator: Any, inputs: np.ndarray, labels: np.ndarray | None) -> list[str]:
    """Fit; a ConvergenceWarning is returned for the metadata, any other warning re-raised."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if labels is None:
            estimator.fit(inputs)
        else:
            estimator.fit(inputs, labels)
    notes = []
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            notes.append(str(warning.message))
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return notes


def _measure(
    model: Model,
    training: pd.DataFrame,
    validation: pd.DataFrame | None,
    feature_names: Sequence[str],
) -> dict[str, dict[str, float]]:
    columns = list(feature_names)
    train_scores = model.predict(training[columns].to_numpy(dtype=np.float64))
    labels = training["TX_FRAUD"].to_numpy()
    metrics = {
        "training": {
            "auc_roc": auc_roc(labels, train_scores),
            "average_precision": average_precision(labels, train_scores),
        }
    }
    if validation is not None:
        scores = model.predict(validation[columns].to_numpy(dtype=np.float64))
        metrics["validation"] = evaluate_scores(validation, scores)
    return metrics


def _validation_set(
    features: pd.DataFrame, train_start: date, train_end: date, delay_days: int, test_days: int
) -> pd.DataFrame | None:
    """The protocol's test set after the training window, when the data cover it."""
    frame = test_set(
        features,
        train_start=train_start,
        train_end=train_end,
        delay_days=delay_days,
        test_days=test_days,
    )
    if frame.empty or frame["TX_FRAUD"].nunique() < 2:
        return None
    return frame


def train_models(
    features: pd.DataFrame,
    *,
    train_start: date = DEFAULT_TRAIN_START,
    train_end: date = DEFAULT_TRAIN_END,
    kinds: Sequence[str] = DEFAULT_KINDS,
    feature_names: Sequence[str],
    output: Path,
    seed: int = 0,
    parameters: Mapping[str, Mapping[str, Any]] | None = None,
    delay_days: int = DEFAULT_DELAY_DAYS,
    test_days: int = DEFAULT_TEST_DAYS,
) -> dict[str, Path]:
    """Train each of `kinds` on the days [train_start, train_end] (inclusive) of `features`.

    `features` holds TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TX_FRAUD and the columns named
    in `feature_names` (for example transactions joined with `compute_reference_features`).
    Writes one artifact per kind to `output/<kind>/` and `output/summary.json`; returns the
    artifact directories by kind. Each artifact records its training metrics and, when
    `features` covers the protocol's test window after the delay, its metrics there as
    "validation". `parameters` maps a kind to estimator overrides; for "blend" the keys are
    those of `BLEND_DEFAULTS`.
    """
    names = tuple(feature_names)
    requested = list(dict.fromkeys(kinds))
    unknown = [kind for kind in requested if kind not in MODEL_KINDS]
    if unknown:
        raise TrainingError(f"unknown model kind(s) {', '.join(unknown)}")
    missing = [
        name
        for name in ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TX_FRAUD", *names)
        if name not in features.columns
    ]
    if missing:
        raise TrainingError(f"features lack column(s) {', '.join(missing)}")
    settings = {kind: dict(values) for kind, values in (parameters or {}).items()}
    blend_settings = {**BLEND_DEFAULTS, **settings.get("blend", {})}
    if blend_settings["supervised"] not in SUPERVISED_KINDS:
        raise TrainingError(f"blend needs a supervised kind, got {blend_settings['supervised']!r}")

    training = training_set(features, train_start=train_start, train_end=train_end)
    labels = training["TX_FRAUD"].to_numpy(dtype=np.int64)
    if len(np.unique(labels)) != 2:
        raise TrainingError(
            f"the training days {train_start}..{train_end} need both frauds and genuine "
            f"transactions; found {len(training)} transactions, {int(labels.sum())} frauds"
        )
    try:
        validation = _validation_set(features, train_start, train_end, delay_days, test_days)
    except EvaluationError:
        validation = None

    from sklearn.preprocessing import StandardScaler

    inputs = training[list(names)].to_numpy(dtype=np.float64)
    scaler = StandardScaler().fit(inputs)
    standardized = scaler.transform(inputs)

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    base_kinds = [kind for kind in requested if kind != "blend"]
    if "blend" in requested:
        for part in (blend_settings["supervised"], "isolation_forest"):
            if part not in base_kinds:
                base_kinds.append(part)

    summary: dict[str, Any] = {}
    written: dict[str, Path] = {}
    fit_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=".parts-", dir=output) as parts_dir:
        for kind in base_kinds:
            directory = output / kind if kind in requested else Path(parts_dir) / kind
            estimator = build_estimator(kind, seed=seed, overrides=settings.get(kind))
            started = time.perf_counter()
            if kind == "isolation_forest":
                notes = _fit(estimator, standardized[labels == 0], None)
            else:
                notes = _fit(estimator, standardized, labels)
            seconds = time.perf_counter() - started
            fit_seconds[kind] = seconds
            params = {
                "estimator": type(estimator).__name__,
                "standardized_inputs": True,
                "seed": seed,
                "fit_seconds": round(seconds, 3),
                "fit_warnings": notes,
                **_jsonable(estimator.get_params()),
            }
            if kind == "isolation_forest":
                params["fit_on"] = "genuine training transactions"
            info = ArtifactInfo(train_start, train_end, {}, params)
            save_model(
                directory, estimator, kind=kind, scaler=scaler, feature_names=names, info=info
            )
            model = load_model(directory)
            metrics = _measure(model, training, validation, names)
            record_metrics(directory, metrics)
            if kind in requested:
                written[kind] = directory
                summary[kind] = _summary_entry(output, directory, model.version, metrics, seconds)

        if "blend" in requested:
            supervised_dir = written.get(blend_settings["supervised"]) or Path(parts_dir) / str(
                blend_settings["supervised"]
            )
            anomaly_dir = written.get("isolation_forest") or Path(parts_dir) / "isolation_forest"
            anomaly_model = load_model(anomaly_dir)
            quantile = float(blend_settings["anomaly_quantile"])
            floor = float(np.quantile(anomaly_model.predict(inputs), quantile))
            weight = float(blend_settings["weight"])
            seconds = fit_seconds[blend_settings["supervised"]] + fit_seconds["isolation_forest"]
            params = {
                "fit_seconds": round(seconds, 3),
                "supervised": blend_settings["supervised"],
                "weight": weight,
                "anomaly_quantile": quantile,
                "anomaly_floor": floor,
            }
            directory = output / "blend"
            save_blend(
                directory,
                supervised=supervised_dir,
                anomaly=anomaly_dir,
                weight=weight,
                anomaly_floor=floor,
                info=ArtifactInfo(train_start, train_end, {}, params),
            )
            model = load_model(directory)
            metrics = _measure(model, training, validation, names)
            record_metrics(directory, metrics)
            written["blend"] = directory
            summary["blend"] = _summary_entry(output, directory, model.version, metrics, seconds)

    _write_summary(output, summary, names, train_start, train_end, seed)
    return written


def _summary_entry(
    output: Path, directory: Path, version: str, metrics: Mapping[str, Any], seconds: float
) -> dict[str, Any]:
    return {
        "path": str(directory.relative_to(output)),
        "version": version,
        "metrics": metrics,
        "fit_seconds": round(seconds, 3),
    }


def _write_summary(
    output: Path,
    models: Mapping[str, Any],
    names: Sequence[str],
    train_start: date,
    train_end: date,
    seed: int,
) -> None:
    payload = {
        "format_version": FORMAT_VERSION,
        "training_window": {"start": train_start.isoformat(), "end": train_end.isoformat()},
        "feature_names": list(names),
        "seed": seed,
        "models": models,
    }
    (output / SUMMARY_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
