"""The handbook's evaluation protocol and metrics, and its published results to compare with.

Protocol ("one split", handbook chapter 3, `get_train_test_set`): train on the transactions of
the days [train_start, train_end]; skip `delay_days` days whose labels would not be known yet;
test on the next `test_days` days. Cards already known to be compromised are taken out of the
test days: those with a fraud in the training days, plus, for each test day, those with a fraud
on (test day - delay_days - 1), accumulated day after day.

Metrics (handbook chapter 4): AUC ROC and average precision over the test transactions, and
card precision@k: each day, each card scores its highest transaction score of the day, the k
highest-scoring cards are checked, and the share of them with a fraud that day is the day's
precision; cards found compromised (a fraud among a day's top k) are left out of the following
days. The result is the mean over the test days.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

# The handbook's default protocol: train 2018-07-25..07-31, test 2018-08-08..08-14.
DEFAULT_TRAIN_START: Final = date(2018, 7, 25)
DEFAULT_TRAIN_END: Final = date(2018, 7, 31)
DEFAULT_DELAY_DAYS: Final = 7
DEFAULT_TEST_DAYS: Final = 7
DEFAULT_TOP_K: Final = 100

METRIC_NAMES: Final = ("auc_roc", "average_precision", "card_precision_at_100")
METRIC_TITLES: Final = {
    "auc_roc": "AUC ROC",
    "average_precision": "AP",
    "card_precision_at_100": "CP@100",
}

# Results published by the handbook on its simulated data, test week 2018-08-08..08-14.
# "one_split_defaults": chapter 3's baseline, each model with its library defaults;
# "prequential_tuned": chapter 5's model selection, hyper-parameters chosen by prequential
# validation.
HANDBOOK_REFERENCE: Final[dict[str, dict[str, dict[str, float]]]] = {
    "one_split_defaults": {
        "logistic_regression": {
            "auc_roc": 0.871,
            "average_precision": 0.606,
            "card_precision_at_100": 0.291,
        },
        "random_forest": {
            "auc_roc": 0.867,
            "average_precision": 0.658,
            "card_precision_at_100": 0.287,
        },
        "xgboost": {"auc_roc": 0.862, "average_precision": 0.639, "card_precision_at_100": 0.273},
    },
    "prequential_tuned": {
        "logistic_regression": {
            "auc_roc": 0.868,
            "average_precision": 0.623,
            "card_precision_at_100": 0.297,
        },
        "random_forest": {
            "auc_roc": 0.870,
            "average_precision": 0.678,
            "card_precision_at_100": 0.299,
        },
        "xgboost": {"auc_roc": 0.869, "average_precision": 0.687, "card_precision_at_100": 0.303},
    },
}

FloatArray = npt.NDArray[np.float64]


class EvaluationError(ValueError):
    """The data cannot be evaluated as asked (window without transactions, one class only)."""


def transaction_days(frame: pd.DataFrame) -> pd.Series:
    """Each transaction's calendar day (TX_DATETIME at midnight), the handbook's TX_TIME_DAYS."""
    return frame["TX_DATETIME"].dt.normalize()


def _day(value: date) -> pd.Timestamp:
    return pd.Timestamp(value)


def training_set(frame: pd.DataFrame, *, train_start: date, train_end: date) -> pd.DataFrame:
    """The transactions whose day is in [train_start, train_end], by TRANSACTION_ID."""
    if train_end < train_start:
        raise EvaluationError(f"train_end {train_end} is before train_start {train_start}")
    days = transaction_days(frame)
    rows = frame[(days >= _day(train_start)) & (days <= _day(train_end))]
    return rows.sort_values("TRANSACTION_ID", kind="stable")


def test_window(
    *,
    train_end: date,
    delay_days: int = DEFAULT_DELAY_DAYS,
    test_days: int = DEFAULT_TEST_DAYS,
) -> tuple[date, date]:
    """First and last test day: the test starts the day after train_end + delay_days."""
    first = train_end + timedelta(days=delay_days + 1)
    return first, first + timedelta(days=test_days - 1)


def test_set(
    frame: pd.DataFrame,
    *,
    train_start: date,
    train_end: date,
    delay_days: int = DEFAULT_DELAY_DAYS,
    test_days: int = DEFAULT_TEST_DAYS,
) -> pd.DataFrame:
    """The protocol's test transactions, as the handbook's `get_train_test_set` selects them.

    Test day i (0-based) is train_end + delay_days + 1 + i. Customers with a fraud in the
    training days are left out of every test day; before test day i, the customers with a
    fraud on day train_end + i (= test day - delay_days - 1) join them. Rows keep `frame`'s
    index and are ordered by TRANSACTION_ID.
    """
    if delay_days < 0 or test_days < 1:
        raise EvaluationError("delay_days must be >= 0 and test_days >= 1")
    days = transaction_days(frame)
    training = training_set(frame, train_start=train_start, train_end=train_end)
    known = set(training.loc[training["TX_FRAUD"] == 1, "CUSTOMER_ID"].tolist())
    first_test_day, _ = test_window(train_end=train_end, delay_days=delay_days, test_days=1)
    frauds = frame["TX_FRAUD"] == 1
    parts = []
    for offset in range(test_days):
        feedback_day = _day(train_end + timedelta(days=offset))
        known.update(frame.loc[frauds & (days == feedback_day), "CUSTOMER_ID"].tolist())
        day_rows = frame[days == _day(first_test_day + timedelta(days=offset))]
        parts.append(day_rows[~day_rows["CUSTOMER_ID"].isin(known)])
    return pd.concat(parts).sort_values("TRANSACTION_ID", kind="stable")


def _labels_and_scores(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[Any, FloatArray]:
    y = np.asarray(labels).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise EvaluationError(f"{y.shape[0]} labels but {s.shape[0]} scores")
    if len(np.unique(y)) != 2:
        raise EvaluationError("AUC ROC and average precision need both frauds and genuine ones")
    return y, s


def auc_roc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (scikit-learn's roc_auc_score)."""
    y, s = _labels_and_scores(labels, scores)
    return float(roc_auc_score(y, s))


def average_precision(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Average precision (scikit-learn's average_precision_score), the handbook's AP."""
    y, s = _labels_and_scores(labels, scores)
    return float(average_precision_score(y, s))


def daily_card_precision_at_k(
    frame: pd.DataFrame, scores: npt.ArrayLike, k: int = DEFAULT_TOP_K
) -> list[float]:
    """Card precision@k of each day of `frame`, in day order (the handbook's
    `card_precision_top_k` with remove_detected_frauded_cards=True).

    A card's score on a day is its highest transaction score that day, its label 1 when any of
    its transactions that day is a fraud. Cards with equal scores rank by ascending
    CUSTOMER_ID. The precision is divided by k even on a day with fewer than k cards.
    """
    if k < 1:
        raise EvaluationError(f"k must be >= 1, got {k}")
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != (len(frame),):
        raise EvaluationError(f"{len(frame)} transactions but {values.shape} scores")
    cards = pd.DataFrame(
        {
            "day": transaction_days(frame).to_numpy(),
            "CUSTOMER_ID": frame["CUSTOMER_ID"].to_numpy(),
            "score": values,
            "fraud": frame["TX_FRAUD"].to_numpy(dtype=np.int64),
        }
    )
    # One row per (day, card): its best score and whether it had a fraud that day.
    per_card = cards.groupby(["day", "CUSTOMER_ID"], sort=True).max()
    detected: set[Any] = set()
    precisions = []
    for _, day_cards in per_card.groupby(level="day", sort=True):
        ids = day_cards.index.get_level_values("CUSTOMER_ID")
        remaining = day_cards[~ids.isin(detected)]
        order = np.argsort(-remaining["score"].to_numpy(), kind="stable")[:k]
        top = remaining.iloc[order]
        found = top.index.get_level_values("CUSTOMER_ID")[top["fraud"].to_numpy() == 1]
        precisions.append(len(found) / k)
        detected.update(found.tolist())
    return precisions


def card_precision_at_k(
    frame: pd.DataFrame, scores: npt.ArrayLike | None = None, k: int = DEFAULT_TOP_K
) -> float:
    """Mean over days of `daily_card_precision_at_k`; scores default to frame["predictions"]."""
    if scores is None:
        scores = frame["predictions"].to_numpy(dtype=np.float64)
    daily = daily_card_precision_at_k(frame, scores, k)
    if not daily:
        raise EvaluationError("no transactions to compute card precision on")
    return float(np.mean(daily))


def evaluate_scores(
    test_frame: pd.DataFrame, scores: npt.ArrayLike, *, k: int = DEFAULT_TOP_K
) -> dict[str, float]:
    """AUC ROC, average precision and card precision@k of scores for `test_frame`'s rows."""
    labels = test_frame["TX_FRAUD"].to_numpy()
    return {
        "auc_roc": auc_roc(labels, scores),
        "average_precision": average_precision(labels, scores),
        f"card_precision_at_{k}": card_precision_at_k(test_frame, scores, k),
    }


def comparison(
    measured: Mapping[str, Mapping[str, float]],
    *,
    reference: str = "one_split_defaults",
) -> dict[str, Any]:
    """Measured metrics next to the handbook's, with differences, as a JSON-able dict."""
    published = HANDBOOK_REFERENCE[reference]
    rows = []
    for kind, metrics in measured.items():
        handbook = published.get(kind)
        row: dict[str, Any] = {
            "model": kind,
            "measured": {name: round(float(metrics[name]), 4) for name in METRIC_NAMES},
            "handbook": dict(handbook) if handbook else None,
            "difference": None,
        }
        if handbook:
            row["difference"] = {
                name: round(float(metrics[name]) - handbook[name], 4) for name in METRIC_NAMES
            }
        rows.append(row)
    return {"reference": reference, "rows": rows}


def format_comparison(table: Mapping[str, Any]) -> str:
    """A text table of `comparison`'s result: measured | handbook | measured - handbook."""
    titles = [METRIC_TITLES[name] for name in METRIC_NAMES]
    header = (
        f"{'model':<20} | "
        + " ".join(f"{t:>7}" for t in titles)
        + f" | handbook ({table['reference']}) "
        + " ".join(f"{t:>7}" for t in titles)
        + " | difference "
        + " ".join(f"{t:>7}" for t in titles)
    )
    lines = [header, "-" * len(header)]
    for row in table["rows"]:
        measured = " ".join(f"{row['measured'][name]:>7.3f}" for name in METRIC_NAMES)
        if row["handbook"]:
            handbook = " ".join(f"{row['handbook'][name]:>7.3f}" for name in METRIC_NAMES)
            difference = " ".join(f"{row['difference'][name]:>+7.3f}" for name in METRIC_NAMES)
        else:
            handbook = " ".join(f"{'-':>7}" for _ in METRIC_NAMES)
            difference = handbook
        label = f"handbook ({table['reference']}) "
        lines.append(
            f"{row['model']:<20} | {measured} | {'':<{len(label)}}{handbook} | {'':<11}{difference}"
        )
    return "\n".join(lines)


def comparison_table(
    measured: Mapping[str, Mapping[str, float]],
    *,
    reference: str = "one_split_defaults",
) -> tuple[str, dict[str, Any]]:
    """The comparison with the handbook as text and as a JSON-able dict."""
    table = comparison(measured, reference=reference)
    return format_comparison(table), table


# Their names start with "test": keep pytest from collecting them where they are imported.
test_set.__test__ = False  # type: ignore[attr-defined]
test_window.__test__ = False  # type: ignore[attr-defined]
