"""The handbook's protocol: test-set filtering, card precision@k and the comparison table."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from txguard.fraud.models import evaluation

TRAIN_START = date(2018, 7, 25)
TRAIN_END = date(2018, 7, 31)


def frame(rows: list[tuple[str, int, int]]) -> pd.DataFrame:
    """Rows of (day, CUSTOMER_ID, TX_FRAUD), each at noon, ids in row order."""
    return pd.DataFrame(
        {
            "TRANSACTION_ID": range(len(rows)),
            "TX_DATETIME": [pd.Timestamp(f"{day} 12:00:00") for day, _, _ in rows],
            "CUSTOMER_ID": [customer for _, customer, _ in rows],
            "TX_FRAUD": [fraud for _, _, fraud in rows],
        }
    )


def test_training_set_is_the_inclusive_day_range() -> None:
    data = frame(
        [("2018-07-24", 1, 0), ("2018-07-25", 1, 0), ("2018-07-31", 1, 0), ("2018-08-01", 1, 0)]
    )
    data.loc[2, "TX_DATETIME"] = pd.Timestamp("2018-07-31 23:59:59")
    chosen = evaluation.training_set(data, train_start=TRAIN_START, train_end=TRAIN_END)
    assert chosen["TRANSACTION_ID"].tolist() == [1, 2]


def test_test_set_removes_cards_known_compromised_with_the_delay() -> None:
    data = frame(
        [
            ("2018-07-26", 1, 1),  # known at training time: out of every test day
            ("2018-08-01", 2, 1),  # feedback for test day 1 (2018-08-09) onwards
            ("2018-08-06", 3, 1),  # feedback for the last test day (2018-08-14) only
            ("2018-08-07", 4, 1),  # would be feedback for an 8th test day: never removed
            ("2018-08-07", 5, 0),
        ]
        + [
            (f"2018-08-{day:02d}", customer, 0)
            for day in (8, 9, 13, 14)
            for customer in range(1, 6)
        ]
        + [("2018-08-15", 5, 0), ("2018-08-07", 5, 0)]
    )
    test = evaluation.test_set(data, train_start=TRAIN_START, train_end=TRAIN_END)
    by_day = test.groupby(test["TX_DATETIME"].dt.strftime("%m-%d"))["CUSTOMER_ID"].apply(list)
    assert by_day.to_dict() == {
        "08-08": [2, 3, 4, 5],
        "08-09": [3, 4, 5],
        "08-13": [3, 4, 5],
        "08-14": [4, 5],
    }
    assert test["TRANSACTION_ID"].is_monotonic_increasing
    assert evaluation.test_window(train_end=TRAIN_END) == (date(2018, 8, 8), date(2018, 8, 14))


def test_test_set_follows_delay_and_length() -> None:
    data = frame([(f"2018-08-{day:02d}", 7, 0) for day in range(1, 10)])
    test = evaluation.test_set(
        data, train_start=TRAIN_START, train_end=TRAIN_END, delay_days=2, test_days=3
    )
    assert test["TX_DATETIME"].dt.day.tolist() == [3, 4, 5]


def test_card_precision_takes_each_cards_best_score_and_drops_detected_cards() -> None:
    data = frame(
        [
            # Day 1: card 1 (fraud) scores 0.9 through its second transaction; card 2 is genuine.
            ("2018-08-08", 1, 0),
            ("2018-08-08", 1, 1),
            ("2018-08-08", 2, 0),
            ("2018-08-08", 3, 1),
            # Day 2: card 1 is still fraudulent but was detected on day 1, so it is left out.
            ("2018-08-09", 1, 1),
            ("2018-08-09", 3, 1),
            ("2018-08-09", 4, 0),
        ]
    )
    scores = np.array([0.1, 0.9, 0.8, 0.2, 0.99, 0.5, 0.6])
    daily = evaluation.daily_card_precision_at_k(data, scores, k=2)
    # Day 1: top 2 cards are 1 (fraud) and 2; day 2: top 2 of {3, 4} are 4 and 3 (fraud).
    assert daily == [0.5, 0.5]
    assert evaluation.card_precision_at_k(data, scores, k=2) == 0.5
    # Card 3 was in day 1's data but not in its top 2, so it stays in day 2.
    assert evaluation.daily_card_precision_at_k(data, scores, k=1) == [1.0, 0.0]


def test_card_precision_divides_by_k_and_breaks_ties_by_customer_id() -> None:
    data = frame([("2018-08-08", 9, 1), ("2018-08-08", 4, 0), ("2018-08-08", 6, 1)])
    scores = np.array([0.5, 0.5, 0.5])
    # Equal scores: customers 4 and 6 come first; 6 is a fraud.
    assert evaluation.daily_card_precision_at_k(data, scores, k=2) == [0.5]
    # Fewer cards than k still divide by k.
    assert evaluation.daily_card_precision_at_k(data, scores, k=10) == [0.2]
    data["predictions"] = scores
    assert evaluation.card_precision_at_k(data, k=10) == pytest.approx(0.2)


def test_evaluate_scores_on_a_known_ranking() -> None:
    data = frame([("2018-08-08", c, f) for c, f in ((1, 1), (2, 0), (3, 1), (4, 0))])
    result = evaluation.evaluate_scores(data, np.array([0.9, 0.8, 0.7, 0.1]))
    assert result["auc_roc"] == 0.75
    # Precision 1 at recall 0.5, 2/3 at recall 1.
    assert result["average_precision"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert result["card_precision_at_100"] == pytest.approx(0.02)
    with pytest.raises(evaluation.EvaluationError, match="both"):
        evaluation.auc_roc([0, 0], [0.1, 0.2])


def test_comparison_lines_up_measured_and_published_numbers() -> None:
    measured = {
        "logistic_regression": {
            "auc_roc": 0.88,
            "average_precision": 0.6,
            "card_precision_at_100": 0.3,
        },
        "blend": {"auc_roc": 0.9, "average_precision": 0.7, "card_precision_at_100": 0.31},
    }
    text, table = evaluation.comparison_table(measured)
    rows = {row["model"]: row for row in table["rows"]}
    assert rows["logistic_regression"]["handbook"] == {
        "auc_roc": 0.871,
        "average_precision": 0.606,
        "card_precision_at_100": 0.291,
    }
    assert rows["logistic_regression"]["difference"]["average_precision"] == pytest.approx(-0.006)
    assert rows["blend"]["handbook"] is None
    assert "0.606" in text and "-0.006" in text and "blend" in text
    tuned = evaluation.comparison(measured, reference="prequential_tuned")
    assert tuned["rows"][0]["handbook"]["average_precision"] == 0.623
