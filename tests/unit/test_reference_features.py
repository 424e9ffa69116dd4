"""Reference features: window bounds, ties, the terminal delay, and the txguard features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from txguard.fraud.features import ALL_FEATURES
from txguard.fraud.reference_features import FeatureInputError, compute_reference_features

T0 = pd.Timestamp("2018-04-02 10:00:00")  # a Monday
DAY = pd.Timedelta(days=1)
SECOND = pd.Timedelta(seconds=1)


def transactions(
    rows: list[tuple[int, pd.Timestamp, int, int, float, int]],
) -> pd.DataFrame:
    """Rows of (TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_FRAUD)."""
    return pd.DataFrame(
        rows,
        columns=[
            "TRANSACTION_ID",
            "TX_DATETIME",
            "CUSTOMER_ID",
            "TERMINAL_ID",
            "TX_AMOUNT",
            "TX_FRAUD",
        ],
    )


def by_id(features: pd.DataFrame) -> pd.DataFrame:
    return features.set_index("TRANSACTION_ID")


def test_result_keeps_index_and_lists_all_features_in_order() -> None:
    frame = transactions([(7, T0, 1, 1, 10.0, 0), (3, T0 - SECOND, 1, 1, 20.0, 0)])
    frame.index = pd.Index([100, 50])
    result = compute_reference_features(frame)
    assert list(result.columns) == ["TRANSACTION_ID", *ALL_FEATURES]
    assert list(result.index) == [100, 50]
    assert list(result["TRANSACTION_ID"]) == [7, 3]
    assert result.loc[100, "CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2
    assert result.loc[50, "CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1


def test_weekend_and_night_flags_at_their_boundaries() -> None:
    frame = transactions(
        [
            (1, pd.Timestamp("2018-04-07 06:59:59"), 1, 1, 1.0, 0),  # Saturday, last night second
            (2, pd.Timestamp("2018-04-08 07:00:00"), 2, 1, 1.0, 0),  # Sunday, first day second
            (3, pd.Timestamp("2018-04-09 00:00:00"), 3, 1, 1.0, 0),  # Monday midnight
            (4, pd.Timestamp("2018-04-06 23:59:59"), 4, 1, 1.0, 0),  # Friday evening
        ]
    )
    result = by_id(compute_reference_features(frame))
    assert result["TX_DURING_WEEKEND"].to_dict() == {1: 1.0, 2: 1.0, 3: 0.0, 4: 0.0}
    assert result["TX_DURING_NIGHT"].to_dict() == {1: 1.0, 2: 0.0, 3: 1.0, 4: 0.0}


def test_customer_window_excludes_a_transaction_exactly_n_days_earlier() -> None:
    frame = transactions(
        [
            (1, T0, 1, 1, 10.0, 0),
            (2, T0 + DAY - SECOND, 1, 1, 20.0, 0),
            (3, T0 + DAY, 1, 1, 60.0, 0),
            (4, T0 + 7 * DAY, 1, 1, 30.0, 0),
        ]
    )
    result = by_id(compute_reference_features(frame))
    assert result.loc[3, "CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2
    assert result.loc[3, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == pytest.approx(40.0)
    assert result.loc[3, "CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 3
    # Seven days after transaction 1 exactly: 1 is out, 2 and 3 are in.
    assert result.loc[4, "CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 3
    assert result.loc[4, "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"] == pytest.approx(110.0 / 3)
    assert result.loc[4, "CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 4
    assert result.loc[4, "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"] == pytest.approx(30.0)


def test_ties_see_earlier_ids_at_the_same_time_but_not_later_ones() -> None:
    # Listed out of order on purpose: the order is (time, id), not the frame's.
    frame = transactions(
        [
            (6, T0, 1, 5, 30.0, 0),
            (5, T0, 1, 5, 10.0, 0),
            (4, T0 - SECOND, 2, 5, 99.0, 0),
        ]
    )
    result = by_id(compute_reference_features(frame))
    assert result.loc[5, "CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1
    assert result.loc[5, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 10.0
    assert result.loc[6, "CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2
    assert result.loc[6, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 20.0
    assert result.loc[6, "CUSTOMER_ID_NB_TX_1HOUR_WINDOW"] == 2
    assert result.loc[6, "CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == 0.0
    assert result.loc[6, "CUSTOMER_ID_AMOUNT_RATIO_30DAY"] == 3.0


def test_terminal_window_is_delayed_and_half_open() -> None:
    t = T0 + 40 * DAY
    frame = transactions(
        [
            (1, t - 8 * DAY, 1, 9, 1.0, 1),  # exactly d + 1 days earlier: out of the 1-day window
            (2, t - 8 * DAY + SECOND, 2, 9, 1.0, 1),  # in the 1-day window
            (3, t - 7 * DAY, 3, 9, 1.0, 0),  # exactly d days earlier: in
            (4, t - 7 * DAY + SECOND, 4, 9, 1.0, 1),  # inside the delay period: out
            (5, t - 14 * DAY + SECOND, 5, 9, 1.0, 0),  # in the 7-day window
            (9, t - 14 * DAY, 9, 9, 1.0, 1),  # exactly d + 7 days earlier: in the 30-day only
            (6, t - 37 * DAY, 6, 9, 1.0, 1),  # exactly d + 30 days earlier: out everywhere
            (7, t, 7, 9, 1.0, 1),
            (8, t - 7 * DAY, 8, 3, 1.0, 1),  # another terminal
        ]
    )
    result = by_id(compute_reference_features(frame))
    row = result.loc[7]
    assert row["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 2
    assert row["TERMINAL_ID_RISK_1DAY_WINDOW"] == 0.5
    assert row["TERMINAL_ID_NB_TX_7DAY_WINDOW"] == 4
    assert row["TERMINAL_ID_RISK_7DAY_WINDOW"] == 0.5
    assert row["TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 5
    assert row["TERMINAL_ID_RISK_30DAY_WINDOW"] == 0.6


def test_terminal_risk_is_zero_without_transactions_in_the_window() -> None:
    frame = transactions([(1, T0, 1, 1, 5.0, 1), (2, T0 + 6 * DAY, 2, 1, 5.0, 1)])
    result = by_id(compute_reference_features(frame))
    for n in (1, 7, 30):
        assert result.loc[2, f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] == 0
        assert result.loc[2, f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] == 0.0


def test_delay_days_moves_the_terminal_window() -> None:
    frame = transactions([(1, T0, 1, 1, 5.0, 1), (2, T0 + 2 * DAY, 2, 1, 5.0, 0)])
    result = by_id(compute_reference_features(frame, delay_days=2))
    assert result.loc[2, "TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 1
    assert result.loc[2, "TERMINAL_ID_RISK_1DAY_WINDOW"] == 1.0
    default = by_id(compute_reference_features(frame))
    assert default.loc[2, "TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 0


def test_one_hour_window_and_seconds_since_previous() -> None:
    frame = transactions(
        [
            (1, T0 - 40 * DAY, 1, 1, 10.0, 0),
            (2, T0, 1, 1, 10.0, 0),
            (3, T0 + pd.Timedelta(minutes=30), 1, 1, 10.0, 0),
            (4, T0 + pd.Timedelta(hours=1), 1, 1, 10.0, 0),
            (5, T0, 2, 1, 10.0, 0),
        ]
    )
    result = by_id(compute_reference_features(frame))
    assert result["CUSTOMER_ID_NB_TX_1HOUR_WINDOW"].to_dict() == {1: 1, 2: 1, 3: 2, 4: 2, 5: 1}
    cap = 30 * 86_400.0
    assert result["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"].to_dict() == {
        1: cap,
        2: cap,  # the previous one is 40 days earlier
        3: 1800.0,
        4: 1800.0,
        5: cap,
    }


def test_amount_ratio_and_zscore_against_the_previous_thirty_days() -> None:
    frame = transactions(
        [
            (1, T0 - 30 * DAY, 1, 1, 1000.0, 0),  # exactly 30 days before 4: excluded
            (2, T0 - 2 * DAY, 1, 1, 10.0, 0),
            (3, T0 - DAY, 1, 1, 20.0, 0),
            (4, T0, 1, 1, 30.0, 0),
        ]
    )
    result = by_id(compute_reference_features(frame))
    # Previous amounts 10 and 20: mean 15, population deviation 5.
    assert result.loc[4, "CUSTOMER_ID_AMOUNT_RATIO_30DAY"] == 2.0
    assert result.loc[4, "CUSTOMER_ID_AMOUNT_ZSCORE_30DAY"] == 3.0
    # Before 3, both 1000 and 10 are within 30 days: mean 505, deviation 495.
    assert result.loc[3, "CUSTOMER_ID_AMOUNT_RATIO_30DAY"] == pytest.approx(20.0 / 505.0)
    assert result.loc[3, "CUSTOMER_ID_AMOUNT_ZSCORE_30DAY"] == pytest.approx((20 - 505) / 495)
    # A single previous amount: a ratio but no deviation.
    assert result.loc[2, "CUSTOMER_ID_AMOUNT_RATIO_30DAY"] == 0.01
    assert result.loc[2, "CUSTOMER_ID_AMOUNT_ZSCORE_30DAY"] == 0.0
    # No previous amount at all.
    assert result.loc[1, "CUSTOMER_ID_AMOUNT_RATIO_30DAY"] == 1.0
    assert result.loc[1, "CUSTOMER_ID_AMOUNT_ZSCORE_30DAY"] == 0.0


def test_zscore_is_zero_when_previous_amounts_are_all_equal() -> None:
    frame = transactions(
        [
            (1, T0, 1, 1, 0.1, 0),
            (2, T0 + SECOND, 1, 1, 0.1, 0),
            (3, T0 + 2 * SECOND, 1, 1, 0.1, 0),
            (4, T0 + 3 * SECOND, 1, 1, 0.3, 0),
        ]
    )
    result = by_id(compute_reference_features(frame))
    assert result.loc[4, "CUSTOMER_ID_AMOUNT_ZSCORE_30DAY"] == 0.0
    assert result.loc[4, "CUSTOMER_ID_AMOUNT_RATIO_30DAY"] == pytest.approx(3.0, rel=1e-15)


def test_ratio_is_one_when_previous_amounts_are_all_zero() -> None:
    frame = transactions([(1, T0, 1, 1, 0.0, 0), (2, T0 + SECOND, 1, 1, 5.0, 0)])
    result = by_id(compute_reference_features(frame))
    assert result.loc[2, "CUSTOMER_ID_AMOUNT_RATIO_30DAY"] == 1.0


def test_matches_pandas_rolling_on_random_data_with_ties() -> None:
    rng = np.random.default_rng(3)
    size = 2000
    seconds = np.sort(rng.integers(0, 45 * 86_400, size))
    seconds[::5] = seconds[::5] // 3600 * 3600  # many exact ties and whole-hour boundaries
    frame = transactions(
        list(
            zip(
                rng.permutation(size).tolist(),
                (pd.Timestamp("2018-04-01") + pd.to_timedelta(seconds, unit="s")).tolist(),
                rng.integers(0, 12, size).tolist(),
                rng.integers(0, 20, size).tolist(),
                np.round(rng.gamma(2.0, 30.0, size), 2).tolist(),
                (rng.random(size) < 0.1).astype(int).tolist(),
                strict=True,
            )
        )
    )
    result = by_id(compute_reference_features(frame))
    ordered = frame.sort_values(["TX_DATETIME", "TRANSACTION_ID"]).set_index("TX_DATETIME")
    for _, rows in ordered.groupby("CUSTOMER_ID"):
        ids = rows["TRANSACTION_ID"].to_numpy()
        for n in (1, 7, 30):
            window = rows["TX_AMOUNT"].rolling(f"{n}D")
            counts = window.count().to_numpy()
            np.testing.assert_array_equal(
                result.loc[ids, f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"].to_numpy(), counts
            )
            np.testing.assert_allclose(
                result.loc[ids, f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"].to_numpy(),
                window.sum().to_numpy() / counts,
                rtol=1e-12,
            )
    for _, rows in ordered.groupby("TERMINAL_ID"):
        ids = rows["TRANSACTION_ID"].to_numpy()
        delay_frauds = rows["TX_FRAUD"].rolling("7D").sum()
        delay_count = rows["TX_FRAUD"].rolling("7D").count()
        for n in (1, 7, 30):
            count = rows["TX_FRAUD"].rolling(f"{7 + n}D").count() - delay_count
            frauds = rows["TX_FRAUD"].rolling(f"{7 + n}D").sum() - delay_frauds
            np.testing.assert_array_equal(
                result.loc[ids, f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"].to_numpy(), count.to_numpy()
            )
            np.testing.assert_allclose(
                result.loc[ids, f"TERMINAL_ID_RISK_{n}DAY_WINDOW"].to_numpy(),
                (frauds / count).fillna(0.0).to_numpy(),
                rtol=1e-12,
            )


def test_rejects_amounts_that_are_not_whole_cents() -> None:
    frame = transactions([(1, T0, 1, 1, 10.005, 0)])
    with pytest.raises(FeatureInputError, match="whole cents"):
        compute_reference_features(frame)


def test_rejects_missing_columns_and_duplicate_ids() -> None:
    frame = transactions([(1, T0, 1, 1, 10.0, 0), (1, T0, 2, 1, 10.0, 0)])
    with pytest.raises(FeatureInputError, match="TX_FRAUD"):
        compute_reference_features(frame.drop(columns="TX_FRAUD"))
    with pytest.raises(FeatureInputError, match="duplicates"):
        compute_reference_features(frame)
