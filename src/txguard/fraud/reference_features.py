"""Batch reference implementation of every model feature: the oracle for the streaming features.

`compute_reference_features` computes `ALL_FEATURES` for a whole table of transactions at once,
by the definitions of the Fraud Detection Handbook (chapter 3, "Baseline feature transformation")
and of the txguard features documented in `txguard.fraud.features`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

from txguard.fraud.features import (
    ALL_FEATURES,
    DAY_SECONDS,
    TERMINAL_DELAY_DAYS,
    WINDOW_DAYS,
)

REQUIRED_COLUMNS = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_FRAUD",
)

NANOS_PER_SECOND = 1_000_000_000
HOUR_NANOS = 3_600 * NANOS_PER_SECOND
DAY_NANOS = DAY_SECONDS * NANOS_PER_SECOND
AMOUNT_HISTORY_DAYS = 30
SECONDS_SINCE_PREV_CAP = float(AMOUNT_HISTORY_DAYS * DAY_SECONDS)
MINOR_UNITS_PER_UNIT = 100
# Amounts further than this from a whole number of cents are not money amounts.
_CENT_TOLERANCE = 1e-6
# Above this, products of cent sums could overflow int64; such rows use Python integers.
_INT64_SAFE = 2**62

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class FeatureInputError(ValueError):
    """The transactions table cannot be turned into features (missing column, bad value)."""


def compute_reference_features(
    transactions: pd.DataFrame, *, delay_days: int = TERMINAL_DELAY_DAYS
) -> pd.DataFrame:
    """Every feature of `ALL_FEATURES` for every transaction, as float64 columns in that order.

    The result is indexed like `transactions` and starts with its TRANSACTION_ID column.
    Input columns: TRANSACTION_ID (unique), TX_DATETIME (naive UTC; tz-aware is converted to
    UTC), CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT (in currency units, whole cents) and TX_FRAUD (0/1).

    Order and ties. Each customer's (terminal's) transactions are ordered by
    (TX_DATETIME, TRANSACTION_ID). A window "(a, t], this one included" holds the transactions
    with a < time <= t that come up to and including this one in that order: an earlier
    transaction at exactly the same time counts, a later one does not. This is what pandas'
    time-based ``rolling(window, closed="right")`` does over the sorted frame, the handbook's
    ``get_customer_spending_behaviour_features``.

    Definitions (t = this transaction's TX_DATETIME, d = `delay_days`, n in 1, 7, 30):

    - TX_AMOUNT: the amount itself.
    - TX_DURING_WEEKEND: 1 when t falls on a Saturday or Sunday (weekday >= 5), else 0.
    - TX_DURING_NIGHT: 1 when t's hour is <= 6 (00:00:00 to 06:59:59), else 0.
    - CUSTOMER_ID_NB_TX_nDAY_WINDOW: the customer's transactions in (t - n days, t], this one
      included; a transaction exactly n days earlier is out.
    - CUSTOMER_ID_AVG_AMOUNT_nDAY_WINDOW: mean TX_AMOUNT of those transactions.
    - TERMINAL_ID_NB_TX_nDAY_WINDOW: the terminal's transactions in (t - d - n days, t - d]:
      exactly d days earlier is in, exactly d + n days earlier is out. Computed as the handbook
      does, as the count over (t - d - n, t] minus the count over (t - d, t]; both counts hold
      the same tied transactions, so ties at t never matter here.
    - TERMINAL_ID_RISK_nDAY_WINDOW: frauds (TX_FRAUD) among those transactions divided by their
      count; 0 when there are none (the handbook's ``fillna(0)``).
    - CUSTOMER_ID_NB_TX_1HOUR_WINDOW: the customer's transactions in (t - 1 h, t], this one
      included.
    - CUSTOMER_ID_SECONDS_SINCE_PREV_TX: t minus the time of the customer's previous transaction
      in the order above (0 for a tie), in seconds, capped at 30 days; 30 days when it has none.
    - CUSTOMER_ID_AMOUNT_RATIO_30DAY: TX_AMOUNT / mean amount of the customer's previous
      transactions in (t - 30 days, t] (this one excluded, earlier ties included); 1.0 when there
      are none, and 1.0 when their mean is 0.
    - CUSTOMER_ID_AMOUNT_ZSCORE_30DAY: (TX_AMOUNT - that mean) / their population standard
      deviation; 0.0 when there are fewer than 2 of them or the deviation is exactly 0.

    Amount statistics are computed exactly in whole cents (integer sums), so "deviation is 0"
    means all previous amounts are equal, never a rounding residue; averages and ratios are then
    correctly rounded float64 values. Raises `FeatureInputError` for a missing column, a missing
    time or amount, a duplicate TRANSACTION_ID or an amount that is not a whole number of cents.
    """
    if delay_days < 0:
        raise FeatureInputError(f"delay_days must be >= 0, got {delay_days}")
    _check_columns(transactions)
    times_ns = _times_ns(transactions["TX_DATETIME"])
    amounts = transactions["TX_AMOUNT"].to_numpy(dtype=np.float64)
    cents = _whole_cents(amounts)
    frauds = transactions["TX_FRAUD"].to_numpy(dtype=np.int64)
    tx_ids = transactions["TRANSACTION_ID"].to_numpy()
    if pd.Series(tx_ids).duplicated().any():
        raise FeatureInputError("TRANSACTION_ID has duplicates; every transaction needs its own id")

    columns: dict[str, FloatArray] = {"TX_AMOUNT": amounts.copy()}
    datetimes = pd.DatetimeIndex(times_ns.astype("datetime64[ns]"))
    columns["TX_DURING_WEEKEND"] = (datetimes.day_of_week >= 5).astype(np.float64)
    columns["TX_DURING_NIGHT"] = (datetimes.hour <= 6).astype(np.float64)
    columns.update(_customer_features(transactions["CUSTOMER_ID"], times_ns, tx_ids, cents))
    columns.update(
        _terminal_features(transactions["TERMINAL_ID"], times_ns, tx_ids, frauds, delay_days)
    )

    result = pd.DataFrame(
        {"TRANSACTION_ID": transactions["TRANSACTION_ID"].to_numpy()}, index=transactions.index
    )
    for name in ALL_FEATURES:
        result[name] = columns[name]
    return result


def _check_columns(transactions: pd.DataFrame) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in transactions.columns]
    if missing:
        raise FeatureInputError(f"transactions lack column(s) {', '.join(missing)}")
    for name in ("TX_DATETIME", "TX_AMOUNT", "CUSTOMER_ID", "TERMINAL_ID", "TX_FRAUD"):
        if transactions[name].isna().any():
            raise FeatureInputError(f"{name} has missing values")


def _times_ns(column: pd.Series) -> IntArray:
    """TX_DATETIME as int64 nanoseconds since the epoch, naive UTC."""
    if not pd.api.types.is_datetime64_any_dtype(column):
        raise FeatureInputError(f"TX_DATETIME must be datetime64, got {column.dtype}")
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    return column.to_numpy().astype("datetime64[ns]").astype(np.int64)


def _whole_cents(amounts: FloatArray) -> IntArray:
    scaled = amounts * MINOR_UNITS_PER_UNIT
    cents = np.rint(scaled)
    off = np.abs(scaled - cents) > _CENT_TOLERANCE * np.maximum(1.0, np.abs(scaled))
    if off.any():
        example = amounts[np.argmax(off)]
        raise FeatureInputError(f"TX_AMOUNT must be whole cents; {example!r} is not")
    return cents.astype(np.int64)


class _SortedGroups:
    """Rows ordered by (key, time, transaction id), with each key's rows contiguous."""

    def __init__(self, keys: pd.Series, times_ns: IntArray, tx_ids: npt.NDArray[np.generic]):
        key_codes = pd.factorize(keys.to_numpy())[0]
        self.order: IntArray = np.lexsort((tx_ids, times_ns, key_codes)).astype(np.int64)
        self.times: IntArray = times_ns[self.order]
        sorted_codes = key_codes[self.order]
        boundaries = np.flatnonzero(np.diff(sorted_codes)) + 1
        self.starts: IntArray = np.concatenate(([0], boundaries)).astype(np.int64)
        self.ends: IntArray = np.concatenate((boundaries, [len(sorted_codes)])).astype(np.int64)
        group_sizes = self.ends - self.starts
        # Position of each sorted row's group start, to tell the first row of a group.
        self.group_start_of_row: IntArray = np.repeat(self.starts, group_sizes)

    def window_start(self, width_ns: int) -> IntArray:
        """For each sorted row i, the first row of its group with time > time_i - width."""
        first = np.empty(len(self.times), dtype=np.int64)
        for start, end in zip(self.starts.tolist(), self.ends.tolist(), strict=True):
            group_times = self.times[start:end]
            first[start:end] = start + np.searchsorted(
                group_times, group_times - width_ns, side="right"
            )
        return first

    def unsort(self, sorted_values: npt.NDArray[np.float64]) -> FloatArray:
        values = np.empty_like(sorted_values)
        values[self.order] = sorted_values
        return values


def _prefix_sums(values: IntArray) -> IntArray:
    """prefix[i] = sum of values[:i], so a window [a, b] sums to prefix[b + 1] - prefix[a]."""
    prefix = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=prefix[1:])
    return prefix


def _customer_features(
    customers: pd.Series, times_ns: IntArray, tx_ids: npt.NDArray[np.generic], cents: IntArray
) -> dict[str, FloatArray]:
    groups = _SortedGroups(customers, times_ns, tx_ids)
    rows = np.arange(len(groups.times), dtype=np.int64)
    sorted_cents = cents[groups.order]
    cent_sums = _prefix_sums(sorted_cents)
    features: dict[str, FloatArray] = {}

    for n in WINDOW_DAYS:
        first = groups.window_start(n * DAY_NANOS)
        count = rows - first + 1
        total_cents = cent_sums[rows + 1] - cent_sums[first]
        features[f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"] = groups.unsort(count.astype(np.float64))
        average = total_cents / (count * float(MINOR_UNITS_PER_UNIT))
        features[f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"] = groups.unsort(average)

    first_hour = groups.window_start(HOUR_NANOS)
    features["CUSTOMER_ID_NB_TX_1HOUR_WINDOW"] = groups.unsort(
        (rows - first_hour + 1).astype(np.float64)
    )

    has_previous = rows > groups.group_start_of_row
    gaps = np.full(len(rows), SECONDS_SINCE_PREV_CAP)
    previous_gap_ns = groups.times[1:] - groups.times[:-1]
    gap_seconds = previous_gap_ns / NANOS_PER_SECOND
    gaps[1:] = np.where(
        has_previous[1:], np.minimum(gap_seconds, SECONDS_SINCE_PREV_CAP), SECONDS_SINCE_PREV_CAP
    )
    features["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] = groups.unsort(gaps)

    first_month = groups.window_start(AMOUNT_HISTORY_DAYS * DAY_NANOS)
    ratio, zscore = _amount_ratio_and_zscore(sorted_cents, first_month, rows)
    features["CUSTOMER_ID_AMOUNT_RATIO_30DAY"] = groups.unsort(ratio)
    features["CUSTOMER_ID_AMOUNT_ZSCORE_30DAY"] = groups.unsort(zscore)
    return features


def _amount_ratio_and_zscore(
    cents: IntArray, first: IntArray, rows: IntArray
) -> tuple[FloatArray, FloatArray]:
    """Ratio and z-score of each amount against the previous amounts of its window [first, row).

    With m previous amounts summing to s1 (squares to s2) and this amount c, all in cents:
    ratio = c * m / s1 and z = (m * c - s1) / sqrt(m * s2 - s1^2), both exact up to one rounding
    of the final float operations.
    """
    cent_sums = _prefix_sums(cents)
    square_sums = _prefix_sums(cents * cents)
    previous = rows - first
    s1 = cent_sums[rows] - cent_sums[first]
    s2 = square_sums[rows] - square_sums[first]

    ratio = np.ones(len(rows))
    has_mean = (previous >= 1) & (s1 != 0)
    ratio[has_mean] = cents[has_mean] * previous[has_mean] / s1[has_mean].astype(np.float64)

    zscore = np.zeros(len(rows))
    candidates = np.flatnonzero(previous >= 2)
    m, c, t1, t2 = previous[candidates], cents[candidates], s1[candidates], s2[candidates]
    bound = np.abs(m.astype(np.float64)) * np.abs(t2.astype(np.float64)) + np.square(
        t1.astype(np.float64)
    )
    if bound.size and (bound.max() >= _INT64_SAFE or np.abs(m * c).max() >= _INT64_SAFE):
        spread = np.array(
            [int(a) * int(b) - int(s) * int(s) for a, b, s in zip(m, t2, t1, strict=True)],
            dtype=object,
        )
        numerator = np.array(
            [int(a) * int(x) - int(s) for a, x, s in zip(m, c, t1, strict=True)], dtype=object
        )
        nonzero = spread != 0
        values = np.zeros(len(candidates))
        values[nonzero] = [
            float(num) / float(np.sqrt(float(sp)))
            for num, sp in zip(numerator[nonzero], spread[nonzero], strict=True)
        ]
        zscore[candidates] = values
        return ratio, zscore
    spread_i = m * t2 - t1 * t1
    numerator_i = m * c - t1
    nonzero = spread_i != 0
    zscore[candidates[nonzero]] = numerator_i[nonzero] / np.sqrt(
        spread_i[nonzero].astype(np.float64)
    )
    return ratio, zscore


def _terminal_features(
    terminals: pd.Series,
    times_ns: IntArray,
    tx_ids: npt.NDArray[np.generic],
    frauds: IntArray,
    delay_days: int,
) -> dict[str, FloatArray]:
    groups = _SortedGroups(terminals, times_ns, tx_ids)
    rows = np.arange(len(groups.times), dtype=np.int64)
    fraud_sums = _prefix_sums(frauds[groups.order])
    # Rows in (t - d, t]: the delay period whose labels are not known yet.
    delay_first = np.minimum(groups.window_start(delay_days * DAY_NANOS), rows + 1)
    features: dict[str, FloatArray] = {}
    for n in WINDOW_DAYS:
        window_first = groups.window_start((delay_days + n) * DAY_NANOS)
        count = delay_first - window_first
        fraud_count = fraud_sums[delay_first] - fraud_sums[window_first]
        risk = np.zeros(len(rows))
        known = count > 0
        risk[known] = fraud_count[known] / count[known]
        features[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] = groups.unsort(count.astype(np.float64))
        features[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] = groups.unsort(risk)
    return features
