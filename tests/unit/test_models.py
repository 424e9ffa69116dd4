"""Model artifacts: exact numpy evaluation, contributions, round trips and corrupt files."""

from __future__ import annotations

import hashlib
import json
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost
from sklearn.ensemble import IsolationForest, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from txguard.fraud.models.artifact import (
    METADATA_FILE,
    ArtifactInfo,
    BlendModel,
    ModelArtifactError,
    load_model,
    save_blend,
    save_model,
)
from txguard.fraud.models.training import train_models

NAMES = ("amount", "count", "risk", "ratio")
INFO = ArtifactInfo(
    training_start=date(2018, 7, 25),
    training_end=date(2018, 7, 31),
    metrics={"training": {"auc_roc": 0.9}},
    parameters={"note": "test"},
)


def _data(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(NAMES))) * [40.0, 3.0, 0.1, 1.0] + [50.0, 5.0, 0.05, 1.0]
    signal = (x[:, 0] - 50) / 40 + 8 * x[:, 2] + rng.normal(scale=0.7, size=rows)
    return x, (signal > 1.3).astype(np.int64)


@pytest.fixture(scope="module")
def train() -> tuple[np.ndarray, np.ndarray]:
    return _data(1500, seed=1)


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    x, _ = _data(400, seed=2)
    x[::37, 1] = np.nan  # trees send missing values the way scikit-learn does
    return x


@pytest.fixture(scope="module")
def scaler(train: tuple[np.ndarray, np.ndarray]) -> StandardScaler:
    return StandardScaler().fit(train[0])


def _fit_forest(train: tuple[np.ndarray, np.ndarray], scaler: StandardScaler):
    x, y = train
    x = x.copy()
    x[::23, 1] = np.nan  # so some nodes learn where missing values go
    return RandomForestClassifier(n_estimators=15, random_state=0, n_jobs=1).fit(
        scaler.transform(x), y
    )


def test_random_forest_matches_scikit_learn_and_contributions_add_up(
    tmp_path: Path, train, inputs, scaler
) -> None:
    forest = _fit_forest(train, scaler)
    save_model(
        tmp_path / "rf", forest, kind="random_forest", scaler=scaler, feature_names=NAMES, info=INFO
    )
    model = load_model(tmp_path / "rf")
    expected = forest.predict_proba(scaler.transform(inputs))[:, 1]
    scores = model.predict(inputs)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-9)
    assert len(np.unique(expected)) > 5  # a forest that actually splits
    parts = model.decompose(inputs)
    assert parts.contributions.shape == (len(inputs), len(NAMES))
    np.testing.assert_allclose(parts.bias + parts.contributions.sum(axis=1), scores, atol=1e-12)
    assert np.allclose(parts.bias, parts.bias[0])
    np.testing.assert_array_equal(model.contributions(inputs), parts.contributions)
    # The features that decide the label carry most of the attribution.
    share = np.abs(parts.contributions).sum(axis=0)
    assert share[0] > share[3] and share[2] > share[3]


def test_isolation_forest_matches_score_samples(tmp_path: Path, train, inputs, scaler) -> None:
    x, _ = train
    forest = IsolationForest(n_estimators=25, random_state=0).fit(scaler.transform(x))
    save_model(
        tmp_path / "if",
        forest,
        kind="isolation_forest",
        scaler=scaler,
        feature_names=NAMES,
        info=INFO,
    )
    model = load_model(tmp_path / "if")
    outliers = np.vstack([inputs, [[900.0, 50.0, 3.0, -20.0]]])
    expected = -forest.score_samples(scaler.transform(outliers))
    scores = model.predict(outliers)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-9)
    assert scores[-1] > np.quantile(scores[:-1], 0.99)
    parts = model.decompose(outliers)
    np.testing.assert_allclose(
        parts.bias + parts.contributions.sum(axis=1), np.log2(scores), atol=1e-12
    )
    # Every tree's root holds max_samples points, so the bias is log2(0.5).
    np.testing.assert_allclose(parts.bias, -1.0, atol=1e-12)


def test_isolation_forest_with_feature_subsampling(tmp_path: Path, train, inputs, scaler) -> None:
    x, _ = train
    forest = IsolationForest(n_estimators=10, max_features=2, random_state=3).fit(
        scaler.transform(x)
    )
    save_model(
        tmp_path / "if",
        forest,
        kind="isolation_forest",
        scaler=scaler,
        feature_names=NAMES,
        info=INFO,
    )
    expected = -forest.score_samples(scaler.transform(inputs))
    np.testing.assert_allclose(load_model(tmp_path / "if").predict(inputs), expected, atol=1e-9)


def test_logistic_regression_round_trip(tmp_path: Path, train, inputs, scaler) -> None:
    x, y = train
    classifier = LogisticRegression(random_state=0).fit(scaler.transform(x), y)
    save_model(
        tmp_path / "lr",
        classifier,
        kind="logistic_regression",
        scaler=scaler,
        feature_names=NAMES,
        info=INFO,
    )
    model = load_model(tmp_path / "lr")
    clean = np.nan_to_num(inputs, nan=5.0)
    np.testing.assert_allclose(
        model.predict(clean), classifier.predict_proba(scaler.transform(clean))[:, 1], atol=1e-12
    )
    parts = model.decompose(clean)
    np.testing.assert_allclose(
        parts.contributions, scaler.transform(clean) * classifier.coef_[0], atol=1e-12
    )
    np.testing.assert_allclose(
        parts.bias + parts.contributions.sum(axis=1),
        classifier.decision_function(scaler.transform(clean)),
        atol=1e-10,
    )


def test_xgboost_round_trip_and_contributions(tmp_path: Path, train, inputs, scaler) -> None:
    x, y = train
    classifier = xgboost.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1, random_state=0)
    classifier.fit(scaler.transform(x), y)
    save_model(
        tmp_path / "xgb",
        classifier,
        kind="xgboost",
        scaler=scaler,
        feature_names=NAMES,
        info=INFO,
    )
    model = load_model(tmp_path / "xgb")
    standardized = scaler.transform(inputs)
    np.testing.assert_allclose(
        model.predict(inputs), classifier.predict_proba(standardized)[:, 1], atol=1e-7
    )
    margin = classifier.predict(standardized, output_margin=True)
    parts = model.decompose(inputs)
    np.testing.assert_allclose(parts.bias + parts.contributions.sum(axis=1), margin, atol=1e-4)


def _saved_parts(tmp_path: Path, train, scaler) -> tuple[Path, Path]:
    x, y = train
    standardized = scaler.transform(x)
    classifier = xgboost.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1, random_state=0)
    save_model(
        tmp_path / "xgb",
        classifier.fit(standardized, y),
        kind="xgboost",
        scaler=scaler,
        feature_names=NAMES,
        info=INFO,
    )
    save_model(
        tmp_path / "if",
        IsolationForest(n_estimators=10, random_state=0).fit(standardized),
        kind="isolation_forest",
        scaler=scaler,
        feature_names=NAMES,
        info=INFO,
    )
    return tmp_path / "xgb", tmp_path / "if"


def test_blend_weights_its_parts_and_explains_the_score(
    tmp_path: Path, train, inputs, scaler
) -> None:
    supervised, anomaly = _saved_parts(tmp_path, train, scaler)
    save_blend(
        tmp_path / "blend",
        supervised=supervised,
        anomaly=anomaly,
        weight=0.25,
        anomaly_floor=0.55,
        info=INFO,
    )
    model = load_model(tmp_path / "blend")
    assert isinstance(model, BlendModel)
    outliers = np.vstack([inputs, [[900.0, 50.0, 3.0, -20.0]]])
    supervised_scores = load_model(supervised).predict(outliers)
    anomaly_scores = load_model(anomaly).predict(outliers)
    expected = 0.75 * supervised_scores + 0.25 * np.clip((anomaly_scores - 0.55) / 0.45, 0, 1)
    scores = model.predict(outliers)
    np.testing.assert_allclose(scores, expected, atol=1e-12)
    assert scores[-1] > 0.75 * supervised_scores[-1]
    parts = model.decompose(outliers)
    np.testing.assert_allclose(parts.bias + parts.contributions.sum(axis=1), scores, atol=1e-9)
    metadata = json.loads((tmp_path / "blend" / METADATA_FILE).read_text())
    assert [(c["kind"], c["weight"]) for c in metadata["components"]] == [
        ("xgboost", 0.75),
        ("isolation_forest", 0.25),
    ]


def test_metadata_records_what_the_detector_needs(tmp_path: Path, train, scaler) -> None:
    forest = _fit_forest(train, scaler)
    version = save_model(
        tmp_path / "rf", forest, kind="random_forest", scaler=scaler, feature_names=NAMES, info=INFO
    )
    metadata = json.loads((tmp_path / "rf" / METADATA_FILE).read_text())
    assert metadata["format_version"] == 1
    assert metadata["kind"] == "random_forest"
    assert metadata["version"] == version
    assert metadata["feature_names"] == list(NAMES)
    assert metadata["training_window"] == {"start": "2018-07-25", "end": "2018-07-31"}
    assert metadata["metrics"] == {"training": {"auc_roc": 0.9}}
    assert metadata["parameters"] == {"note": "test"}
    model = load_model(tmp_path / "rf")
    assert (model.version, model.kind, model.feature_names) == (version, "random_forest", NAMES)
    # The same model written again has the same version; a different one does not.
    again = save_model(
        tmp_path / "rf2",
        forest,
        kind="random_forest",
        scaler=scaler,
        feature_names=NAMES,
        info=INFO,
    )
    assert again == version
    other = RandomForestClassifier(n_estimators=15, random_state=1).fit(
        scaler.transform(train[0]), train[1]
    )
    changed = save_model(
        tmp_path / "rf3", other, kind="random_forest", scaler=scaler, feature_names=NAMES, info=INFO
    )
    assert changed != version


def test_no_pickles_are_written(tmp_path: Path, train, scaler) -> None:
    supervised, anomaly = _saved_parts(tmp_path, train, scaler)
    save_model(
        tmp_path / "rf",
        _fit_forest(train, scaler),
        kind="random_forest",
        scaler=scaler,
        feature_names=NAMES,
        info=INFO,
    )
    save_blend(
        tmp_path / "blend",
        supervised=supervised,
        anomaly=anomaly,
        weight=0.1,
        anomaly_floor=0.6,
        info=INFO,
    )
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert {path.suffix for path in files} == {".json", ".npz"}
    for path in files:
        if path.suffix == ".npz":
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    header = archive.read(name)[:200]
                    assert b"'O'" not in header and b"|O" not in header, name
            with np.load(path, allow_pickle=False) as arrays:
                assert all(arrays[name].dtype != object for name in arrays.files)
        else:
            json.loads(path.read_text())


def _write_rf(tmp_path: Path, train, scaler) -> Path:
    save_model(
        tmp_path / "rf",
        _fit_forest(train, scaler),
        kind="random_forest",
        scaler=scaler,
        feature_names=NAMES,
        info=INFO,
    )
    return tmp_path / "rf"


def test_corrupt_model_file_is_refused(tmp_path: Path, train, scaler) -> None:
    directory = _write_rf(tmp_path, train, scaler)
    data = bytearray((directory / "trees.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (directory / "trees.npz").write_bytes(bytes(data))
    with pytest.raises(ModelArtifactError, match=r"trees\.npz.*sha256"):
        load_model(directory)


def test_missing_or_broken_files_are_refused(tmp_path: Path, train, scaler) -> None:
    directory = _write_rf(tmp_path, train, scaler)
    with pytest.raises(ModelArtifactError, match="no such artifact directory"):
        load_model(tmp_path / "absent")
    metadata_path = directory / METADATA_FILE
    original = metadata_path.read_text()

    metadata_path.write_text(original[:40])
    with pytest.raises(ModelArtifactError, match=r"metadata\.json: not readable JSON"):
        load_model(directory)

    for change, message in (
        ({"format_version": 99}, "format_version 99 is not supported"),
        ({"kind": "neural_net"}, "kind 'neural_net' is not supported"),
        ({"feature_names": ["a", "b", "c", "d"]}, "feature names differ"),
        ({"version": "0" * 16}, "'version' does not match"),
    ):
        metadata_path.write_text(json.dumps({**json.loads(original), **change}))
        with pytest.raises(ModelArtifactError, match=message):
            load_model(directory)

    metadata_path.write_text(original)
    (directory / "trees.npz").unlink()
    with pytest.raises(ModelArtifactError, match=r"trees\.npz: file listed in metadata\.json"):
        load_model(directory)
    metadata_path.unlink()
    with pytest.raises(ModelArtifactError, match=r"metadata\.json: file is missing"):
        load_model(directory)


def test_inconsistent_tree_arrays_are_refused(tmp_path: Path, train, scaler) -> None:
    directory = _write_rf(tmp_path, train, scaler)
    with np.load(directory / "trees.npz", allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays["children_left"][0] = 0  # the root would point at itself
    np.savez(directory / "trees.npz", **arrays)
    metadata = json.loads((directory / METADATA_FILE).read_text())
    # Re-sign the edited file so only the structural check can catch it.
    digest = hashlib.sha256((directory / "trees.npz").read_bytes()).hexdigest()
    metadata["files"]["trees.npz"] = digest
    metadata["version"] = hashlib.sha256(f"trees.npz\0{digest}\n".encode()).hexdigest()[:16]
    (directory / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(ModelArtifactError, match="children_left"):
        load_model(directory)


def test_predict_rejects_wrongly_shaped_features(tmp_path: Path, train, scaler) -> None:
    model = load_model(_write_rf(tmp_path, train, scaler))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        model.predict(np.zeros((3, 5)))
    assert model.predict(np.zeros(4)).shape == (1,)


def _transactions(days: int, per_day: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = days * per_day
    x, y = _data(rows, seed)
    start = pd.Timestamp("2018-07-20")
    frame = pd.DataFrame(x, columns=list(NAMES))
    frame.insert(0, "TRANSACTION_ID", np.arange(rows))
    offsets = np.sort(rng.integers(0, days * 86_400, rows))
    frame.insert(1, "TX_DATETIME", start + pd.to_timedelta(offsets, unit="s"))
    frame.insert(2, "CUSTOMER_ID", rng.integers(0, 300, rows))
    frame["TX_FRAUD"] = y
    return frame


def test_train_models_writes_every_kind_and_a_summary(tmp_path: Path) -> None:
    frame = _transactions(days=30, per_day=120, seed=5)
    small: dict[str, dict[str, object]] = {
        "random_forest": {"n_estimators": 8},
        "xgboost": {"n_estimators": 8},
        "isolation_forest": {"n_estimators": 8},
        "blend": {"supervised": "random_forest", "weight": 0.2},
    }
    written = train_models(
        frame,
        feature_names=NAMES,
        output=tmp_path,
        parameters=small,
    )
    assert set(written) == {
        "logistic_regression",
        "random_forest",
        "xgboost",
        "isolation_forest",
        "blend",
    }
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["training_window"] == {"start": "2018-07-25", "end": "2018-07-31"}
    for kind, directory in written.items():
        assert directory == tmp_path / kind
        model = load_model(directory)
        assert summary["models"][kind]["version"] == model.version
        metadata = json.loads((directory / METADATA_FILE).read_text())
        assert set(metadata["metrics"]) == {"training", "validation"}
        assert set(metadata["metrics"]["validation"]) == {
            "auc_roc",
            "average_precision",
            "card_precision_at_100",
        }
    # The scaler was fit on the training days only: 2018-07-25 .. 2018-07-31 inclusive.
    days = frame["TX_DATETIME"].dt.normalize()
    in_window = frame[(days >= "2018-07-25") & (days <= "2018-07-31")]
    stored = json.loads((tmp_path / "logistic_regression" / "model.json").read_text())
    np.testing.assert_allclose(stored["scaler"]["mean"], in_window[list(NAMES)].mean(), rtol=1e-12)
    blend = json.loads((tmp_path / "blend" / METADATA_FILE).read_text())
    assert blend["components"][0]["kind"] == "random_forest"
    assert blend["parameters"]["weight"] == 0.2
    assert not any(path.name.startswith(".") for path in tmp_path.iterdir())
