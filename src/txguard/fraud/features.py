"""What the scorer sees of one transaction: the event and the features computed from its history."""

from __future__ import annotations

from dataclasses import dataclass

from txguard.schema.v1.events_pb2 import TransactionCreated


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
