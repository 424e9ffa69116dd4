"""The store contract every backend fulfils, and the records that cross it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from txguard.schema.v1.decision_pb2 import FraudDecision
from txguard.schema.v1.transaction_pb2 import Transaction


class StoreError(Exception):
    """Base class of store failures."""


class StoreLocked(StoreError):
    """The store's write lock stayed held by other connections until the lock deadline passed."""

    def __init__(self, location: str, waited_seconds: float) -> None:
        super().__init__(
            f"the write lock of store {location} stayed taken for {waited_seconds:.1f} s: another "
            "connection holds a write transaction open (a stuck txguard service, or a sqlite3 "
            "shell inside BEGIN); end it, then retry"
        )
        self.location = location
        self.waited_seconds = waited_seconds


class IdempotencyKeyReused(StoreError):
    """The client's idempotency key was used before for a different request."""

    def __init__(self, client_id: str, idempotency_key: str) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} of client {client_id!r} was already used "
            "for a different request"
        )
        self.client_id = client_id
        self.idempotency_key = idempotency_key


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event to publish, written in the same database transaction as the row it describes."""

    event_id: str
    topic: str
    key: bytes
    payload: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class PendingOutboxEvent:
    """An outbox event not yet acknowledged by Kafka; `seq` is its commit order."""

    seq: int
    event: OutboxEvent
    created_at_us: int


@dataclass(frozen=True, slots=True)
class NewTransaction:
    """Everything written atomically for one accepted transaction."""

    client_id: str
    idempotency_key: str
    # Hash of the canonical request (with the card already tokenized): detects key reuse.
    request_fingerprint: bytes
    # Stored as the transaction's record; a replay is answered with it, byte for byte, as the
    # create was (`txguard.schema.responses`).
    transaction: Transaction
    outbox_event: OutboxEvent


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """Result of recording one transaction: `created` is False for an idempotent replay."""

    created: bool
    response: bytes


@dataclass(frozen=True, slots=True)
class DecisionApplied:
    """Result of applying one decision."""

    transaction_id: str
    # "applied", "duplicate" (already had a decision) or "unknown" (no such transaction here).
    result: str


@dataclass(frozen=True, slots=True)
class PublishedEvents:
    """Outbox events Kafka acknowledged, to be marked published (`seqs` in any order)."""

    seqs: tuple[int, ...]
    published_at_us: int


class PublishedHandoff:
    """Acknowledged outbox events handed from a relay to the group-commit writer of the same
    store in the same process, which marks them in its next batch transaction: the relay then
    writes nothing itself, and the writer does not wait for the write lock behind it.

    Only events Kafka acknowledged are ever offered, so marking them later (or never, after a
    crash: they are published again and consumers drop the duplicates) loses nothing. A relay
    whose offer is refused (no writer attached: `txguard serve relay`, or the writer has closed)
    marks the events itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake: Callable[[], None] | None = None
        self._offered: list[PublishedEvents] = []

    def attach(self, wake: Callable[[], None]) -> bool:
        """Become the writer that marks offered events; `wake()` is called (from the offering
        thread) at each offer. False if another writer is attached."""
        with self._lock:
            if self._wake is not None:
                return False
            self._wake = wake
            return True

    def detach(self) -> list[PublishedEvents]:
        """Stop taking offers; returns those not taken yet, for the leaving writer to mark."""
        with self._lock:
            self._wake = None
            offered, self._offered = self._offered, []
            return offered

    def offer(self, events: PublishedEvents) -> bool:
        """Hand `events` to the attached writer; False (nothing taken) when there is none."""
        with self._lock:
            wake = self._wake
            if wake is None:
                return False
            self._offered.append(events)
        wake()
        return True

    def take(self) -> list[PublishedEvents]:
        """Everything offered so far, oldest first; the writer marks it in its next batch."""
        with self._lock:
            offered, self._offered = self._offered, []
            return offered

    def give_back(self, events: Sequence[PublishedEvents]) -> None:
        """Events taken for a batch that failed: they go into the next batch again."""
        if events:
            with self._lock:
                self._offered[:0] = events


@dataclass(frozen=True, slots=True)
class OutboxBacklog:
    count: int
    oldest_created_at_us: int | None


class TransactionStore(Protocol):
    """Storage of transactions, idempotency records, the outbox and applied decisions."""

    def record_transactions(
        self, batch: Sequence[NewTransaction], published: Sequence[PublishedEvents] = ()
    ) -> list[RecordOutcome | IdempotencyKeyReused]:
        """Record each item in one database transaction (group commit).

        Per item, the transaction row, its idempotency record and its outbox event are written
        together or not at all. A replay of a known key with the same fingerprint yields the
        stored response (`created=False`); with another fingerprint, `IdempotencyKeyReused`.
        `published` (events a relay handed over) is marked in the same transaction; `batch` may
        then be empty.
        """
        ...

    def get_transaction(self, transaction_id: str) -> Transaction | None:
        """The transaction with its current status and applied decision, or None."""
        ...

    def pending_outbox(self, limit: int, after_seq: int = 0) -> list[PendingOutboxEvent]:
        """Unpublished outbox events after `after_seq` in commit order, oldest first.

        A relay that handed acknowledged events to the writer reads past them (`after_seq`)
        until they are marked; seqs follow commit order, so nothing committed later is skipped.
        """
        ...

    def mark_published(self, seqs: Sequence[int], published_at_us: int) -> None: ...

    def published_handoff(self) -> PublishedHandoff:
        """The one handoff of this store in this process, shared by all its connections."""
        ...

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
