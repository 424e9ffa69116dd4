"""Features: what the scorer sees of one transaction, computed from event time alone.

The handbook's 15 inputs (Le Borgne et al., Reproducible Machine Learning for Credit Card Fraud
Detection) under their column names, and txguard's own; `reference_features.py` computes the same
in batch, and the two must agree for every transaction.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from txguard.schema.currencies import MINOR_UNITS
from txguard.schema.v1.events_pb2 import TransactionCreated

if TYPE_CHECKING:
    from txguard.fraud.state import AccountHistory, StateLimits
    from txguard.fraud.terminal_table import TerminalTable

DAY_SECONDS = 86_400
# Window lengths of the handbook's customer and terminal features, in days.
WINDOW_DAYS = (1, 7, 30)
# Terminal features look at transactions at least this old, whose labels are known by now.
TERMINAL_DELAY_DAYS = 7

# The handbook's 15 model inputs, in the handbook's order and under its column names.
HANDBOOK_FEATURES: tuple[str, ...] = (
    "TX_AMOUNT",
    "TX_DURING_WEEKEND",
    "TX_DURING_NIGHT",
    *(
        name
        for n in WINDOW_DAYS
        for name in (f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW", f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW")
    ),
    *(
        name
        for n in WINDOW_DAYS
        for name in (f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW", f"TERMINAL_ID_RISK_{n}DAY_WINDOW")
    ),
)

# txguard's own features, from the customer's history in event time:
# - CUSTOMER_ID_NB_TX_1HOUR_WINDOW: the customer's transactions in (t - 1 h, t], this one included;
# - CUSTOMER_ID_SECONDS_SINCE_PREV_TX: t minus the customer's previous transaction time, capped at
#   30 days (30 days when there is none in (t - 30 d, t]);
# - CUSTOMER_ID_AMOUNT_RATIO_30DAY: TX_AMOUNT / mean amount of the customer's previous transactions
#   in (t - 30 d, t], this one excluded; 1.0 when there is none;
# - CUSTOMER_ID_AMOUNT_ZSCORE_30DAY: (TX_AMOUNT - that mean) / their population standard
#   deviation; 0.0 when there are fewer than 2 of them or the deviation is 0.
TXGUARD_FEATURES: tuple[str, ...] = (
    "CUSTOMER_ID_NB_TX_1HOUR_WINDOW",
    "CUSTOMER_ID_SECONDS_SINCE_PREV_TX",
    "CUSTOMER_ID_AMOUNT_RATIO_30DAY",
    "CUSTOMER_ID_AMOUNT_ZSCORE_30DAY",
)

ALL_FEATURES: tuple[str, ...] = HANDBOOK_FEATURES + TXGUARD_FEATURES


HOUR_MS = 3_600_000
DAY_MS = DAY_SECONDS * 1000
_WINDOWS_MS = tuple(n * DAY_MS for n in WINDOW_DAYS)
_LONGEST_WINDOW_MS = _WINDOWS_MS[-1]
_TERMINAL_DELAY_MS = TERMINAL_DELAY_DAYS * DAY_MS
# 1970-01-01 was a Thursday: weekday 3 with Monday = 0, as pandas counts.
_EPOCH_WEEKDAY = 3


@dataclass(frozen=True, slots=True)
class TransactionFeatures:
    """Features of one transaction, all derived from event time, never from the wall clock."""

    amount_minor: int
    currency: str
    # The account's transactions in the velocity window ending at this one, this one included.
    transactions_in_velocity_window: int
    # One value per name in ALL_FEATURES, in that order.
    values: tuple[float, ...] = ()

    def named(self) -> dict[str, float]:
        return dict(zip(ALL_FEATURES, self.values, strict=True))


@dataclass(frozen=True, slots=True)
class ScoringInput:
    """One transaction to score: the event as received plus its features."""

    event: TransactionCreated
    event_time_ms: int
    features: TransactionFeatures

    @property
    def account_id(self) -> str:
        return self.event.transaction.account_id


def event_time_ms(event: TransactionCreated) -> int:
    """The transaction's own timestamp (when it happened), in milliseconds since the epoch."""
    return int(event.transaction.occurred_at.ToMilliseconds())


def major_units(amount_minor: int, currency: str) -> float:
    """The amount as the handbook's TX_AMOUNT: a float in the currency's major unit."""
    return amount_minor / 10 ** MINOR_UNITS.get(currency, 2)


def calendar_features(time_ms: int) -> tuple[float, float]:
    """TX_DURING_WEEKEND and TX_DURING_NIGHT of an event time (UTC)."""
    seconds = time_ms // 1000
    weekday = (seconds // DAY_SECONDS + _EPOCH_WEEKDAY) % 7
    hour = (seconds % DAY_SECONDS) // 3600
    return float(weekday >= 5), float(hour <= 6)


def customer_features(
    history: AccountHistory, position: int, currency: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The handbook's six customer features and txguard's four, for the event at `position`.

    The event is already recorded; windows end at it and include it, and events recorded after
    it with the same time are not part of its windows (as in a time-ordered batch computation).
    """
    times = history.times_ms
    amounts = history.amounts_minor
    scale = 10 ** MINOR_UNITS.get(currency, 2)
    time_ms = times[position]
    end = position + 1
    handbook: list[float] = []
    start_30d = end
    for window_ms in _WINDOWS_MS:
        start = bisect.bisect_right(times, time_ms - window_ms, 0, end)
        count = end - start
        handbook.append(float(count))
        handbook.append(sum(amounts[start:end]) / count / scale)
        start_30d = start
    in_hour = end - bisect.bisect_right(times, time_ms - HOUR_MS, 0, end)
    since_previous = (
        min(time_ms - times[position - 1], _LONGEST_WINDOW_MS)
        if position > start_30d
        else _LONGEST_WINDOW_MS
    )
    # In integer cents, as exact as the final division: with m previous amounts summing to s1
    # (squares s2), ratio = c m / s1 and z = (m c - s1) / sqrt(m s2 - s1^2).
    previous = amounts[start_30d:position]
    amount = amounts[position]
    m = len(previous)
    total = sum(previous)
    ratio = amount * m / total if m and total else 1.0
    zscore = 0.0
    if m >= 2:
        spread = m * sum(a * a for a in previous) - total * total
        if spread > 0:
            zscore = (m * amount - total) / math.sqrt(spread)
    own = (float(in_hour), since_previous / 1000, ratio, zscore)
    return tuple(handbook), own


def terminal_features(table: TerminalTable, terminal_id: str, time_ms: int) -> tuple[float, ...]:
    """The handbook's six terminal features: for n in 1, 7, 30 days, the terminal's transactions
    in (t - d - n days, t - d] and the share of them known as fraud by t."""
    if not terminal_id:
        return _NO_TERMINAL
    values: list[float] = []
    for count, frauds in table.windows(
        terminal_id,
        until_ms=time_ms - _TERMINAL_DELAY_MS,
        windows_ms=_WINDOWS_MS,
        known_by_ms=time_ms,
    ):
        values.append(float(count))
        values.append(frauds / count if count else 0.0)
    return tuple(values)


def transaction_features(
    amount_minor: int,
    currency: str,
    terminal_id: str,
    history: AccountHistory,
    position: int,
    table: TerminalTable,
    *,
    velocity_window_ms: int,
) -> TransactionFeatures:
    """Every feature of one event recorded at `position` of its account's history, in
    ALL_FEATURES order."""
    time_ms = history.times_ms[position]
    weekend, night = calendar_features(time_ms)
    customer, own = customer_features(history, position, currency)
    terminal = terminal_features(table, terminal_id, time_ms)
    values = (major_units(amount_minor, currency), weekend, night, *customer, *terminal, *own)
    end = position + 1
    in_velocity_window = end - bisect.bisect_right(
        history.times_ms, time_ms - velocity_window_ms, 0, end
    )
    return TransactionFeatures(
        amount_minor=amount_minor,
        currency=currency,
        transactions_in_velocity_window=in_velocity_window,
        values=values,
    )


def record_and_compute(
    history: AccountHistory,
    id_hash: int,
    time_ms: int,
    amount_minor: int,
    currency: str,
    terminal_id: str,
    table: TerminalTable,
    limits: StateLimits,
    *,
    velocity_window_ms: int,
) -> TransactionFeatures:
    """Record one event in its account's history and compute its features: the definition the
    detector's batch computation follows.

    An event beyond what the account remembers (see `AccountHistory.record`) is not remembered
    and is scored from itself alone: its windows reach back before anything the state holds.
    """
    position = history.record(id_hash, time_ms, amount_minor, limits)
    if position < 0:
        history = type(history)(history.account_id)
        position = history.record(id_hash, time_ms, amount_minor, limits)
    return transaction_features(
        amount_minor,
        currency,
        terminal_id,
        history,
        position,
        table,
        velocity_window_ms=velocity_window_ms,
    )


_NO_TERMINAL = (0.0,) * (2 * len(WINDOW_DAYS))
