"""Model artifacts: a directory per model, loadable without unpickling anything.

Layout of an artifact directory (every kind has `metadata.json`, written last):

- logistic_regression: `model.json` (feature names, scaler mean and scale, coefficients,
  intercept);
- random_forest, isolation_forest: `trees.npz` (feature names, scaler mean and scale, and the
  flat node table of `trees.TreeArrays`; loaded with ``allow_pickle=False``);
- xgboost: `model.json` (XGBoost's own JSON format) and `scaler.json`;
- blend: `blend.json` (weights and anomaly mapping) and two complete artifacts in the
  subdirectories `supervised/` and `anomaly/`.

`metadata.json` holds the format version, kind, feature names in input order, training window,
metrics, parameters, the sha256 of every model file, and `version`: a short sha256 over the
model files (not over metadata.json, so re-evaluating a model never changes its version).
Loading checks every file's hash, so a truncated or edited file is reported, never used.

All kinds standardise their inputs with the training set's mean and scale first, as the
handbook does for every model. `predict` returns a fraud score in [0, 1]; `contributions`
explains it per feature, in the space each kind is additive in (see `Decomposition`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt
from scipy.special import expit

from txguard.fraud.models.trees import (
    TreeArrays,
    average_path_length,
    export_isolation_forest,
    export_random_forest,
)

FORMAT_VERSION: Final = 1
METADATA_FILE: Final = "metadata.json"
MODEL_JSON: Final = "model.json"
SCALER_JSON: Final = "scaler.json"
TREES_NPZ: Final = "trees.npz"
BLEND_JSON: Final = "blend.json"
SUPERVISED_DIR: Final = "supervised"
ANOMALY_DIR: Final = "anomaly"
VERSION_HEX_DIGITS: Final = 16

SupervisedKind = Literal["logistic_regression", "random_forest", "xgboost"]
ModelKind = Literal["logistic_regression", "random_forest", "xgboost", "isolation_forest", "blend"]
SUPERVISED_KINDS: Final[tuple[SupervisedKind, ...]] = (
    "logistic_regression",
    "random_forest",
    "xgboost",
)
MODEL_KINDS: Final[tuple[ModelKind, ...]] = (*SUPERVISED_KINDS, "isolation_forest", "blend")
_MODEL_FILES: Final[dict[str, tuple[str, ...]]] = {
    "logistic_regression": (MODEL_JSON,),
    "random_forest": (TREES_NPZ,),
    "xgboost": (MODEL_JSON, SCALER_JSON),
    "isolation_forest": (TREES_NPZ,),
}

# What a kind's contributions add up to, together with the bias.
ContributionSpace = Literal["probability", "log_odds", "log2_anomaly_score", "score"]

FloatArray = npt.NDArray[np.float64]


class ModelArtifactError(Exception):
    """An artifact directory that cannot be loaded or written; the message names the file."""


class LoadedModel(Protocol):
    """What every loaded artifact offers; `load_model` returns one of the classes below."""

    @property
    def version(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def feature_names(self) -> tuple[str, ...]: ...

    def predict(self, features: npt.ArrayLike) -> FloatArray:
        """Fraud score in [0, 1] per row of `features` (columns in `feature_names` order)."""
        ...

    def contributions(self, features: npt.ArrayLike) -> FloatArray:
        """Per row and feature, the feature's contribution to the score (shape (n, features))."""
        ...


@dataclass(frozen=True)
class Decomposition:
    """bias + contributions.sum(axis=1) == the score in `space`, row by row.

    Spaces: "probability" (random forest: the score itself), "log_odds" (logistic regression and
    XGBoost: logit of the score), "log2_anomaly_score" (isolation forest: log2 of the score),
    "score" (blend: the score itself).
    """

    bias: FloatArray
    contributions: FloatArray
    space: ContributionSpace


@dataclass(frozen=True)
class ArtifactInfo:
    """What training knows about a model, recorded in its metadata.json."""

    training_start: date | None = None
    training_end: date | None = None
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ArtifactMetadata:
    """The parsed metadata.json of an artifact."""

    kind: str
    version: str
    feature_names: tuple[str, ...]
    training_start: date | None
    training_end: date | None
    metrics: Mapping[str, Mapping[str, float]]
    parameters: Mapping[str, Any]
    files: Mapping[str, str]


@dataclass(frozen=True)
class Standardizer:
    """The training set's per-feature mean and scale: z = (x - mean) / scale."""

    mean: FloatArray
    scale: FloatArray

    @classmethod
    def from_scaler(cls, scaler: Any) -> Standardizer:
        return cls(
            mean=np.asarray(scaler.mean_, dtype=np.float64),
            scale=np.asarray(scaler.scale_, dtype=np.float64),
        )

    def apply(self, features: FloatArray) -> FloatArray:
        # Same operations and order as scikit-learn's StandardScaler.transform.
        standardized = features - self.mean
        standardized /= self.scale
        return standardized

    def to_json(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}


def _feature_matrix(features: npt.ArrayLike, feature_names: tuple[str, ...]) -> FloatArray:
    matrix = np.array(features, dtype=np.float64, ndmin=2)
    if matrix.ndim != 2 or matrix.shape[1] != len(feature_names):
        raise ValueError(
            f"expected features of shape (n, {len(feature_names)}) in the order "
            f"{', '.join(feature_names)}; got shape {np.shape(features)}"
        )
    return matrix


def _sigmoid(margin: FloatArray) -> FloatArray:
    result: FloatArray = expit(margin)
    return result


def _to_score_space(
    decomposition: Decomposition, score: FloatArray, base: FloatArray
) -> FloatArray:
    """Contributions rescaled per row so they add up to score - base (the score at the bias).

    Exact for additive spaces; for the log-odds and log2 spaces each feature keeps its share of
    the row's total, which is the usual linearisation of a monotone link.
    """
    contributions = decomposition.contributions
    if decomposition.space in ("probability", "score"):
        return contributions
    total = contributions.sum(axis=1)
    factor = np.divide(score - base, total, out=np.zeros_like(total), where=total != 0)
    return contributions * factor[:, None]


@dataclass(frozen=True)
class LogisticRegressionModel:
    """sigmoid(intercept + coefficients . z) with z the standardised features."""

    version: str
    feature_names: tuple[str, ...]
    standardizer: Standardizer
    coefficients: FloatArray
    intercept: float
    metadata: ArtifactMetadata | None = None
    kind: str = "logistic_regression"

    def margin(self, features: npt.ArrayLike) -> FloatArray:
        standardized = self.standardizer.apply(_feature_matrix(features, self.feature_names))
        margin: FloatArray = standardized @ self.coefficients + self.intercept
        return margin

    def predict(self, features: npt.ArrayLike) -> FloatArray:
        return _sigmoid(self.margin(features))

    def decompose(self, features: npt.ArrayLike) -> Decomposition:
        standardized = self.standardizer.apply(_feature_matrix(features, self.feature_names))
        return Decomposition(
            bias=np.full(len(standardized), self.intercept),
            contributions=standardized * self.coefficients,
            space="log_odds",
        )

    def contributions(self, features: npt.ArrayLike) -> FloatArray:
        return self.decompose(features).contributions


@dataclass(frozen=True)
class RandomForestModel:
    """Mean over trees of the leaf's fraud fraction, as scikit-learn's predict_proba[:, 1]."""

    version: str
    feature_names: tuple[str, ...]
    standardizer: Standardizer
    trees: TreeArrays
    metadata: ArtifactMetadata | None = None
    kind: str = "random_forest"

    def _standardized(self, features: npt.ArrayLike) -> FloatArray:
        return self.standardizer.apply(_feature_matrix(features, self.feature_names))

    def predict(self, features: npt.ArrayLike) -> FloatArray:
        leaves = self.trees.leaves(self._standardized(features))
        result: FloatArray = self.trees.leaf_score_sum(leaves) / self.trees.tree_count
        return result

    def decompose(self, features: npt.ArrayLike) -> Decomposition:
        standardized = self._standardized(features)
        _, path = self.trees.leaves_and_path_contributions(standardized, len(self.feature_names))
        root_mean = float(self.trees.node_value[self.trees.roots].mean())
        return Decomposition(
            bias=np.full(len(standardized), root_mean),
            contributions=path / self.trees.tree_count,
            space="probability",
        )

    def contributions(self, features: npt.ArrayLike) -> FloatArray:
        return self.decompose(features).contributions


@dataclass(frozen=True)
class IsolationForestModel:
    """Anomaly score s(x) = 2 ** (-E[h(x)] / c(max_samples)) in (0, 1], higher = more unusual.

    This is exactly -IsolationForest.score_samples(x) (the score of Liu et al.): about 0.5 and
    below for ordinary transactions, towards 1 for transactions isolated in few splits.
    """

    version: str
    feature_names: tuple[str, ...]
    standardizer: Standardizer
    trees: TreeArrays
    max_samples: int
    metadata: ArtifactMetadata | None = None
    kind: str = "isolation_forest"

    def _standardized(self, features: npt.ArrayLike) -> FloatArray:
        return self.standardizer.apply(_feature_matrix(features, self.feature_names))

    @property
    def _denominator(self) -> float:
        return self.trees.tree_count * float(average_path_length([self.max_samples])[0])

    def predict(self, features: npt.ArrayLike) -> FloatArray:
        depths = self.trees.leaf_score_sum(self.trees.leaves(self._standardized(features)))
        denominator = self._denominator
        if denominator == 0:
            # A forest fit on a single sample isolates nothing: scikit-learn scores it 1.
            return np.ones_like(depths)
        scores: FloatArray = 2 ** (-(depths / denominator))
        return scores

    def decompose(self, features: npt.ArrayLike) -> Decomposition:
        """log2(score) = bias + contributions.

        Each split on a row's path adds 1 + c(child) - c(parent) to its path length (these
        telescope to the leaf's h(x) = depth + c(n_leaf)); that amount goes to the split's
        feature, averaged over trees and divided by -c(max_samples) like h itself.
        """
        standardized = self._standardized(features)
        _, path = self.trees.leaves_and_path_contributions(standardized, len(self.feature_names))
        denominator = self._denominator
        if denominator == 0:
            return Decomposition(
                np.zeros(len(standardized)), np.zeros_like(path), "log2_anomaly_score"
            )
        root_paths = float(self.trees.node_value[self.trees.roots].sum())
        return Decomposition(
            bias=np.full(len(standardized), -root_paths / denominator),
            contributions=-path / denominator,
            space="log2_anomaly_score",
        )

    def contributions(self, features: npt.ArrayLike) -> FloatArray:
        return self.decompose(features).contributions


@dataclass(frozen=True)
class XGBoostModel:
    """An XGBoost booster loaded from its own JSON format, on standardised features."""

    version: str
    feature_names: tuple[str, ...]
    standardizer: Standardizer
    booster: Any
    metadata: ArtifactMetadata | None = None
    kind: str = "xgboost"

    def _matrix(self, features: npt.ArrayLike) -> Any:
        import xgboost

        standardized = self.standardizer.apply(_feature_matrix(features, self.feature_names))
        return xgboost.DMatrix(standardized, feature_names=list(self.feature_names))

    def predict(self, features: npt.ArrayLike) -> FloatArray:
        return np.asarray(self.booster.predict(self._matrix(features)), dtype=np.float64)

    def decompose(self, features: npt.ArrayLike) -> Decomposition:
        """XGBoost's exact tree SHAP values (pred_contribs); the last column is the bias."""
        contribs = np.asarray(
            self.booster.predict(self._matrix(features), pred_contribs=True), dtype=np.float64
        )
        return Decomposition(bias=contribs[:, -1], contributions=contribs[:, :-1], space="log_odds")

    def contributions(self, features: npt.ArrayLike) -> FloatArray:
        return self.decompose(features).contributions


SupervisedModel = LogisticRegressionModel | RandomForestModel | XGBoostModel


@dataclass(frozen=True)
class BlendModel:
    """(1 - w) * supervised score + w * anomaly(x), so unseen patterns can still raise a score.

    anomaly(x) = clip((s(x) - floor) / (1 - floor), 0, 1) with s the isolation forest's score
    and floor a high quantile of s on the training transactions: only transactions more
    unusual than nearly all training ones add to the score.
    """

    version: str
    feature_names: tuple[str, ...]
    supervised: SupervisedModel
    anomaly: IsolationForestModel
    weight: float
    anomaly_floor: float
    metadata: ArtifactMetadata | None = None
    kind: str = "blend"

    def _anomaly(self, scores: FloatArray) -> FloatArray:
        mapped: FloatArray = np.clip(
            (scores - self.anomaly_floor) / (1.0 - self.anomaly_floor), 0.0, 1.0
        )
        return mapped

    def predict(self, features: npt.ArrayLike) -> FloatArray:
        supervised = self.supervised.predict(features)
        anomaly = self._anomaly(self.anomaly.predict(features))
        blended: FloatArray = (1.0 - self.weight) * supervised + self.weight * anomaly
        return blended

    def decompose(self, features: npt.ArrayLike) -> Decomposition:
        """Both parts' contributions brought to score space, weighted: they add up to the
        score minus the score of a transaction at both models' bias."""
        supervised_parts = self.supervised.decompose(features)
        supervised_score = self.supervised.predict(features)
        supervised_base = _score_at_bias(supervised_parts)
        anomaly_parts = self.anomaly.decompose(features)
        anomaly_score = self._anomaly(self.anomaly.predict(features))
        anomaly_base = self._anomaly(2**anomaly_parts.bias)
        contributions = (1.0 - self.weight) * _to_score_space(
            supervised_parts, supervised_score, supervised_base
        ) + self.weight * _to_score_space(anomaly_parts, anomaly_score, anomaly_base)
        bias = (1.0 - self.weight) * supervised_base + self.weight * anomaly_base
        return Decomposition(bias=bias, contributions=contributions, space="score")

    def contributions(self, features: npt.ArrayLike) -> FloatArray:
        return self.decompose(features).contributions


def _score_at_bias(decomposition: Decomposition) -> FloatArray:
    if decomposition.space == "log_odds":
        return _sigmoid(decomposition.bias)
    return decomposition.bias


Model = SupervisedModel | IsolationForestModel | BlendModel


# ---------------------------------------------------------------------------------------------
# Writing


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version_of(files: Mapping[str, str]) -> str:
    """Short sha256 over the model files' names and hashes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    return digest.hexdigest()[:VERSION_HEX_DIGITS]


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    # allow_nan=False: NaN and infinity are not JSON, and no model value may be one.
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _write_npz(path: Path, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """Uncompressed .npz with fixed timestamps, so the same arrays give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asarray(arrays[name], order="C"))


def _library_versions() -> dict[str, str]:
    import sklearn
    import xgboost

    return {
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "xgboost": xgboost.__version__,
    }


def _write_metadata(
    directory: Path,
    *,
    kind: str,
    feature_names: Sequence[str],
    info: ArtifactInfo,
    files: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> str:
    hashes = {name: _sha256_file(directory / name) for name in files}
    version = _version_of(hashes)
    window = None
    if info.training_start is not None and info.training_end is not None:
        window = {"start": info.training_start.isoformat(), "end": info.training_end.isoformat()}
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "version": version,
        "feature_names": list(feature_names),
        "training_window": window,
        "metrics": {name: dict(values) for name, values in info.metrics.items()},
        "parameters": dict(info.parameters),
        "files": hashes,
        "libraries": _library_versions(),
        **(extra or {}),
    }
    _write_json(directory / METADATA_FILE, payload)
    return version


class _ArtifactWriter:
    """Builds an artifact in a sibling temporary directory, then moves it into place whole."""

    def __init__(self, directory: Path) -> None:
        self.target = Path(directory)
        if self.target.exists() and any(self.target.iterdir()):
            if not (self.target / METADATA_FILE).is_file():
                raise ModelArtifactError(
                    f"{self.target} exists and is not a model artifact; choose an empty or new "
                    "directory"
                )
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(
            tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent)
        )
        # mkdtemp makes the directory private; an artifact is as readable as any other file.
        umask = os.umask(0)
        os.umask(umask)
        self.staging.chmod(0o777 & ~umask)

    def commit(self) -> Path:
        if self.target.exists():
            shutil.rmtree(self.target)
        os.replace(self.staging, self.target)
        return self.target

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def save_model(
    directory: Path,
    estimator: Any,
    *,
    kind: str,
    scaler: Any,
    feature_names: Sequence[str],
    info: ArtifactInfo,
) -> str:
    """Write a fitted estimator and its fitted StandardScaler as an artifact; returns its version.

    `estimator` is a scikit-learn LogisticRegression, RandomForestClassifier or IsolationForest,
    or an xgboost XGBClassifier, matching `kind`. An existing artifact at `directory` is
    replaced; any other non-empty directory is refused.
    """
    names = tuple(feature_names)
    standardizer = Standardizer.from_scaler(scaler)
    if len(standardizer.mean) != len(names):
        raise ModelArtifactError(
            f"the scaler has {len(standardizer.mean)} features but {len(names)} names were given"
        )
    writer = _ArtifactWriter(directory)
    try:
        staging = writer.staging
        if kind == "logistic_regression":
            _save_logistic_regression(staging, estimator, standardizer, names)
        elif kind == "random_forest":
            _save_trees(staging, export_random_forest(estimator), standardizer, names, {})
        elif kind == "isolation_forest":
            extra = {"max_samples": np.asarray(int(estimator.max_samples_), dtype=np.int64)}
            _save_trees(staging, export_isolation_forest(estimator), standardizer, names, extra)
        elif kind == "xgboost":
            booster = estimator.get_booster()
            booster.feature_names = list(names)
            booster.save_model(str(staging / MODEL_JSON))
            _write_json(
                staging / SCALER_JSON, {"feature_names": list(names), **standardizer.to_json()}
            )
        else:
            raise ModelArtifactError(f"unsupported model kind {kind!r}")
        version = _write_metadata(
            staging, kind=kind, feature_names=names, info=info, files=_MODEL_FILES[kind]
        )
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return version


def _save_logistic_regression(
    directory: Path, estimator: Any, standardizer: Standardizer, names: tuple[str, ...]
) -> None:
    classes = [int(c) for c in estimator.classes_]
    if classes != [0, 1]:
        raise ModelArtifactError(f"expected a binary classifier with classes [0, 1], got {classes}")
    payload = {
        "feature_names": list(names),
        "scaler": standardizer.to_json(),
        "coefficients": np.asarray(estimator.coef_, dtype=np.float64).reshape(-1).tolist(),
        "intercept": float(np.asarray(estimator.intercept_, dtype=np.float64).reshape(-1)[0]),
    }
    _write_json(directory / MODEL_JSON, payload)


def _save_trees(
    directory: Path,
    trees: TreeArrays,
    standardizer: Standardizer,
    names: tuple[str, ...],
    extra: Mapping[str, npt.NDArray[Any]],
) -> None:
    arrays: dict[str, npt.NDArray[Any]] = {
        **trees.as_arrays(),
        "feature_names": np.asarray(names, dtype=np.str_),
        "scaler_mean": standardizer.mean,
        "scaler_scale": standardizer.scale,
        **extra,
    }
    _write_npz(directory / TREES_NPZ, arrays)


def save_blend(
    directory: Path,
    *,
    supervised: Path,
    anomaly: Path,
    weight: float,
    anomaly_floor: float,
    info: ArtifactInfo,
) -> str:
    """Write a blend of two existing artifacts (copied in); returns the blend's version."""
    if not 0.0 <= weight <= 1.0:
        raise ModelArtifactError(f"blend weight must be in [0, 1], got {weight}")
    if not 0.0 <= anomaly_floor < 1.0:
        raise ModelArtifactError(f"anomaly floor must be in [0, 1), got {anomaly_floor}")
    supervised_model = load_model(supervised)
    anomaly_model = load_model(anomaly)
    if supervised_model.kind not in SUPERVISED_KINDS:
        raise ModelArtifactError(f"{supervised}: a blend's first part must be supervised")
    if anomaly_model.kind != "isolation_forest":
        raise ModelArtifactError(f"{anomaly}: a blend's second part must be an isolation forest")
    if supervised_model.feature_names != anomaly_model.feature_names:
        raise ModelArtifactError("the blend's two models use different features")
    writer = _ArtifactWriter(directory)
    try:
        staging = writer.staging
        shutil.copytree(supervised, staging / SUPERVISED_DIR)
        shutil.copytree(anomaly, staging / ANOMALY_DIR)
        _write_json(
            staging / BLEND_JSON,
            {
                "supervised_weight": 1.0 - weight,
                "anomaly_weight": weight,
                "anomaly_floor": anomaly_floor,
            },
        )
        files = [BLEND_JSON]
        for part, model in ((SUPERVISED_DIR, supervised_model), (ANOMALY_DIR, anomaly_model)):
            files.extend(f"{part}/{name}" for name in _MODEL_FILES[model.kind])
        components = [
            {
                "name": SUPERVISED_DIR,
                "kind": supervised_model.kind,
                "version": supervised_model.version,
                "weight": 1.0 - weight,
            },
            {
                "name": ANOMALY_DIR,
                "kind": anomaly_model.kind,
                "version": anomaly_model.version,
                "weight": weight,
            },
        ]
        version = _write_metadata(
            staging,
            kind="blend",
            feature_names=supervised_model.feature_names,
            info=info,
            files=files,
            extra={"components": components},
        )
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return version


# ---------------------------------------------------------------------------------------------
# Loading


def load_model(directory: Path, *, threads: int = 1) -> Model:
    """Load an artifact directory written by `save_model` or `save_blend`.

    Raises `ModelArtifactError` naming the file and the problem for a missing directory or
    file, invalid JSON, an unsupported format version or kind, a file whose sha256 differs from
    metadata.json, or model contents that do not fit the features. `threads` bounds XGBoost's
    prediction threads.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelArtifactError(f"{directory}: no such artifact directory")
    metadata = _read_metadata(directory)
    for name, expected in metadata.files.items():
        path = directory / name
        if not path.is_file():
            raise ModelArtifactError(f"{path}: file listed in {METADATA_FILE} is missing")
        if _sha256_file(path) != expected:
            raise ModelArtifactError(
                f"{path}: contents do not match the sha256 recorded in {METADATA_FILE} "
                "(corrupt or modified)"
            )
    if _version_of(metadata.files) != metadata.version:
        raise ModelArtifactError(
            f"{directory / METADATA_FILE}: 'version' does not match the model files' hashes"
        )
    loader = {
        "logistic_regression": _load_logistic_regression,
        "random_forest": _load_random_forest,
        "isolation_forest": _load_isolation_forest,
        "xgboost": lambda d, m: _load_xgboost(d, m, threads),
        "blend": lambda d, m: _load_blend(d, m, threads),
    }[metadata.kind]
    return loader(directory, metadata)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelArtifactError(f"{path}: file is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelArtifactError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(payload, dict):
        raise ModelArtifactError(f"{path}: expected a JSON object")
    return payload


def _field(payload: Mapping[str, Any], name: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if name not in payload:
        raise ModelArtifactError(f"{path}: field {name!r} is missing")
    value = payload[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ModelArtifactError(f"{path}: field {name!r} has the wrong type")
    return value


def _parse_date(value: Any, path: Path) -> date:
    try:
        return date.fromisoformat(str(value))
    except ValueError as exc:
        raise ModelArtifactError(f"{path}: training_window date {value!r} is invalid") from exc


def _read_metadata(directory: Path) -> ArtifactMetadata:
    path = directory / METADATA_FILE
    payload = _read_json(path)
    format_version = _field(payload, "format_version", int, path)
    if format_version != FORMAT_VERSION:
        raise ModelArtifactError(
            f"{path}: format_version {format_version} is not supported (this build reads "
            f"{FORMAT_VERSION})"
        )
    kind = _field(payload, "kind", str, path)
    if kind not in MODEL_KINDS:
        raise ModelArtifactError(
            f"{path}: kind {kind!r} is not supported (one of {', '.join(MODEL_KINDS)})"
        )
    names = _field(payload, "feature_names", list, path)
    if not names or not all(isinstance(name, str) for name in names):
        raise ModelArtifactError(f"{path}: feature_names must be a non-empty list of strings")
    if len(set(names)) != len(names):
        raise ModelArtifactError(f"{path}: feature_names has duplicates")
    files = _field(payload, "files", dict, path)
    if kind in _MODEL_FILES and set(files) != set(_MODEL_FILES[kind]):
        raise ModelArtifactError(
            f"{path}: files must be {', '.join(_MODEL_FILES[kind])} for kind {kind!r}"
        )
    for name, digest in files.items():
        if not isinstance(digest, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ModelArtifactError(f"{path}: invalid entry {name!r} in files")
    window = payload.get("training_window")
    start = end = None
    if window is not None:
        if not isinstance(window, dict):
            raise ModelArtifactError(f"{path}: training_window must be an object or null")
        start = _parse_date(window.get("start"), path)
        end = _parse_date(window.get("end"), path)
    return ArtifactMetadata(
        kind=kind,
        version=_field(payload, "version", str, path),
        feature_names=tuple(names),
        training_start=start,
        training_end=end,
        metrics=payload.get("metrics") or {},
        parameters=payload.get("parameters") or {},
        files=files,
    )


def _float_vector(payload: Mapping[str, Any], name: str, length: int, path: Path) -> FloatArray:
    values = _field(payload, name, list, path)
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelArtifactError(f"{path}: field {name!r} must be a list of numbers") from exc
    if array.shape != (length,) or not np.all(np.isfinite(array)):
        raise ModelArtifactError(f"{path}: field {name!r} must hold {length} finite numbers")
    return array


def _check_names(found: Sequence[str], metadata: ArtifactMetadata, path: Path) -> None:
    if tuple(found) != metadata.feature_names:
        raise ModelArtifactError(
            f"{path}: feature names differ from {METADATA_FILE}'s "
            f"({', '.join(found)} vs {', '.join(metadata.feature_names)})"
        )


def _standardizer(payload: Mapping[str, Any], count: int, path: Path) -> Standardizer:
    scale = _float_vector(payload, "scale", count, path)
    if np.any(scale == 0):
        raise ModelArtifactError(f"{path}: scaler scale has a zero")
    return Standardizer(mean=_float_vector(payload, "mean", count, path), scale=scale)


def _load_logistic_regression(directory: Path, metadata: ArtifactMetadata) -> Model:
    path = directory / MODEL_JSON
    payload = _read_json(path)
    names = _field(payload, "feature_names", list, path)
    _check_names(names, metadata, path)
    count = len(names)
    scaler = _field(payload, "scaler", dict, path)
    intercept = _field(payload, "intercept", (int, float), path)
    if not math.isfinite(intercept):
        raise ModelArtifactError(f"{path}: intercept must be finite")
    return LogisticRegressionModel(
        version=metadata.version,
        feature_names=metadata.feature_names,
        standardizer=_standardizer(scaler, count, path),
        coefficients=_float_vector(payload, "coefficients", count, path),
        intercept=float(intercept),
        metadata=metadata,
    )


def _read_npz(path: Path) -> dict[str, npt.NDArray[Any]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelArtifactError(f"{path}: not a readable numpy .npz archive ({exc})") from exc


def _tree_parts(
    directory: Path, metadata: ArtifactMetadata
) -> tuple[Standardizer, TreeArrays, dict[str, npt.NDArray[Any]], Path]:
    path = directory / TREES_NPZ
    arrays = _read_npz(path)
    if "feature_names" not in arrays:
        raise ModelArtifactError(f"{path}: array 'feature_names' is missing")
    _check_names([str(name) for name in arrays["feature_names"].tolist()], metadata, path)
    count = len(metadata.feature_names)
    scaler = {
        "mean": arrays.get("scaler_mean", np.zeros(0)).tolist(),
        "scale": arrays.get("scaler_scale", np.zeros(0)).tolist(),
    }
    try:
        trees = TreeArrays.from_arrays(arrays, count)
    except ValueError as exc:
        raise ModelArtifactError(f"{path}: {exc}") from exc
    return _standardizer(scaler, count, path), trees, arrays, path


def _load_random_forest(directory: Path, metadata: ArtifactMetadata) -> Model:
    standardizer, trees, _, _ = _tree_parts(directory, metadata)
    return RandomForestModel(
        version=metadata.version,
        feature_names=metadata.feature_names,
        standardizer=standardizer,
        trees=trees,
        metadata=metadata,
    )


def _load_isolation_forest(directory: Path, metadata: ArtifactMetadata) -> Model:
    standardizer, trees, arrays, path = _tree_parts(directory, metadata)
    max_samples = arrays.get("max_samples")
    if max_samples is None or max_samples.shape != () or int(max_samples) < 1:
        raise ModelArtifactError(f"{path}: array 'max_samples' must be a positive integer")
    return IsolationForestModel(
        version=metadata.version,
        feature_names=metadata.feature_names,
        standardizer=standardizer,
        trees=trees,
        max_samples=int(max_samples),
        metadata=metadata,
    )


def _load_xgboost(directory: Path, metadata: ArtifactMetadata, threads: int) -> Model:
    import xgboost

    scaler_path = directory / SCALER_JSON
    scaler = _read_json(scaler_path)
    _check_names(_field(scaler, "feature_names", list, scaler_path), metadata, scaler_path)
    standardizer = _standardizer(scaler, len(metadata.feature_names), scaler_path)
    path = directory / MODEL_JSON
    booster = xgboost.Booster()
    try:
        booster.load_model(str(path))
    except xgboost.core.XGBoostError as exc:
        raise ModelArtifactError(f"{path}: not a loadable XGBoost JSON model ({exc})") from exc
    _check_names(booster.feature_names or [], metadata, path)
    booster.set_param({"nthread": threads})
    return XGBoostModel(
        version=metadata.version,
        feature_names=metadata.feature_names,
        standardizer=standardizer,
        booster=booster,
        metadata=metadata,
    )


def _load_blend(directory: Path, metadata: ArtifactMetadata, threads: int) -> Model:
    path = directory / BLEND_JSON
    payload = _read_json(path)
    weight = _field(payload, "anomaly_weight", (int, float), path)
    floor = _field(payload, "anomaly_floor", (int, float), path)
    if not 0.0 <= weight <= 1.0 or not 0.0 <= floor < 1.0:
        raise ModelArtifactError(
            f"{path}: anomaly_weight must be in [0, 1], anomaly_floor in [0, 1)"
        )
    supervised = load_model(directory / SUPERVISED_DIR, threads=threads)
    anomaly = load_model(directory / ANOMALY_DIR, threads=threads)
    if not isinstance(supervised, LogisticRegressionModel | RandomForestModel | XGBoostModel):
        raise ModelArtifactError(f"{directory / SUPERVISED_DIR}: must be a supervised model")
    if not isinstance(anomaly, IsolationForestModel):
        raise ModelArtifactError(f"{directory / ANOMALY_DIR}: must be an isolation forest")
    for part in (supervised, anomaly):
        if part.feature_names != metadata.feature_names:
            raise ModelArtifactError(f"{path}: a component uses different features than the blend")
    expected_files = {BLEND_JSON} | {
        f"{part}/{name}"
        for part, model in ((SUPERVISED_DIR, supervised), (ANOMALY_DIR, anomaly))
        for name in _MODEL_FILES[model.kind]
    }
    if set(metadata.files) != expected_files:
        raise ModelArtifactError(f"{directory / METADATA_FILE}: files do not match the components")
    return BlendModel(
        version=metadata.version,
        feature_names=metadata.feature_names,
        supervised=supervised,
        anomaly=anomaly,
        weight=float(weight),
        anomaly_floor=float(floor),
        metadata=metadata,
    )


def record_metrics(directory: Path, metrics: Mapping[str, Mapping[str, float]]) -> None:
    """Replace the metrics in an artifact's metadata.json (they are not part of its version)."""
    path = Path(directory) / METADATA_FILE
    payload = _read_json(path)
    payload["metrics"] = {name: dict(values) for name, values in metrics.items()}
    partial = path.with_name(f".{METADATA_FILE}.partial")
    _write_json(partial, payload)
    os.replace(partial, path)
