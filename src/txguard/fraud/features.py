"""What the scorer sees of one transaction: the event and the features computed from its history."""

from __future__ import annotations

from dataclasses import dataclass

from txguard.schema.v1.events_pb2 import TransactionCreated

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


@dataclass(frozen=True, slots=True)
class TransactionFeatures:
    """Features of one transaction, all derived from event time, never from the wall clock."""

    amount_minor: int
    currency: str
    # The account's transactions in the velocity window ending at this one, this one included.
    transactions_in_velocity_window: int


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


def transaction_features(
    event: TransactionCreated, transactions_in_window: int
) -> TransactionFeatures:
    tx = event.transaction
    return TransactionFeatures(
        amount_minor=tx.amount_minor,
        currency=tx.currency,
        transactions_in_velocity_window=transactions_in_window,
    )
