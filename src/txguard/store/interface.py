"""The store contract every backend fulfils, and the records that cross it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from txguard.schema.v1.decision_pb2 import FraudDecision
from txguard.schema.v1.transaction_pb2 import Transaction


class StoreError(Exception):
    """Base class of store failures."""


class IdempotencyKeyReused(StoreError):
    """The client's idempotency key was used before for a different request."""

    def __init__(self, client_id: str, idempotency_key: str) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} of client {client_id!r} was already used "
            "for a different request"
        )
        self.client_id = client_id
        self.idempotency_key = idempotency_key


@dataclass(frozen=True)
class OutboxEvent:
    """An event to publish, written in the same database transaction as the row it describes."""

    event_id: str
    topic: str
    key: bytes
    payload: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class PendingOutboxEvent:
    """An outbox event not yet acknowledged by Kafka; `seq` is its commit order."""

    seq: int
    event: OutboxEvent
    created_at_us: int


@dataclass(frozen=True)
class NewTransaction:
    """Everything written atomically for one accepted transaction."""

    client_id: str
    idempotency_key: str
    # Hash of the canonical request (with the card already tokenized): detects key reuse.
    request_fingerprint: bytes
    transaction: Transaction
    # The serialized response, returned byte for byte when the request is replayed.
    response: bytes
    outbox_event: OutboxEvent


@dataclass(frozen=True)
class RecordOutcome:
    """Result of recording one transaction: `created` is False for an idempotent replay."""

    created: bool
    response: bytes


@dataclass(frozen=True)
class DecisionApplied:
    """Result of applying one decision."""

    transaction_id: str
    # "applied", "duplicate" (already had a decision) or "unknown" (no such transaction here).
    result: str


@dataclass(frozen=True)
class OutboxBacklog:
    count: int
    oldest_created_at_us: int | None


class TransactionStore(Protocol):
    """Storage of transactions, idempotency records, the outbox and applied decisions."""

    def record_transactions(
        self, batch: Sequence[NewTransaction]
    ) -> list[RecordOutcome | IdempotencyKeyReused]:
        """Record each item in one database transaction (group commit).

        Per item, the transaction row, its idempotency record and its outbox event are written
        together or not at all. A replay of a known key with the same fingerprint yields the
        stored response (`created=False`); with another fingerprint, `IdempotencyKeyReused`.
        """
        ...

    def get_transaction(self, transaction_id: str) -> Transaction | None:
        """The transaction with its current status and applied decision, or None."""
        ...

    def pending_outbox(self, limit: int) -> list[PendingOutboxEvent]:
        """Unpublished outbox events in commit order, oldest first."""
        ...

    def mark_published(self, seqs: Sequence[int], published_at_us: int) -> None: ...

    def wait_for_outbox(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for new outbox events; True if told of a commit.

        Lets a relay publish right after a commit instead of at its next poll. A backend may
        only hear of some commits (SQLite: those of this process), so a relay still polls.
        """
        ...

    def checkpoint(self) -> None:
        """Move committed writes from a write-ahead log into the database proper, without
        blocking writers; lets a writer leave this work to another thread. A no-op where the
        backend does it by itself."""
        ...

    def prune_published(self, published_before_us: int) -> int:
        """Delete events published before the given time; returns how many."""
        ...

    def outbox_backlog(self) -> OutboxBacklog: ...

    def apply_decisions(
        self, decisions: Sequence[FraudDecision], applied_at_us: int
    ) -> list[DecisionApplied]:
        """Apply decisions in one database transaction; the first decision of a transaction wins."""
        ...

    def close(self) -> None: ...


class RelayLock(Protocol):
    """Exclusive right to publish a store's outbox; released by `release()` or process death."""

    def try_acquire(self) -> bool: ...

    def release(self) -> None: ...
