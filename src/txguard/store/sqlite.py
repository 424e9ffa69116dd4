"""SQLite (WAL) backend: the embedded default store, zero set-up."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from txguard.schema.v1.decision_pb2 import FraudDecision, Outcome
from txguard.schema.v1.transaction_pb2 import Transaction, TransactionStatus
from txguard.store.interface import (
    DecisionApplied,
    IdempotencyKeyReused,
    NewTransaction,
    OutboxBacklog,
    OutboxEvent,
    PendingOutboxEvent,
    RecordOutcome,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    transaction_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    account_id TEXT NOT NULL,
    status INTEGER NOT NULL,
    occurred_at_us INTEGER NOT NULL,
    accepted_at_us INTEGER NOT NULL,
    record BLOB NOT NULL,
    decision_id TEXT,
    decision BLOB,
    score REAL,
    outcome INTEGER,
    decided_at_us INTEGER,
    applied_at_us INTEGER
);
CREATE INDEX IF NOT EXISTS transactions_by_account ON transactions (account_id, occurred_at_us);
CREATE INDEX IF NOT EXISTS transactions_by_applied ON transactions (applied_at_us)
    WHERE applied_at_us IS NOT NULL;
CREATE TABLE IF NOT EXISTS idempotency_keys (
    client_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_fingerprint BLOB NOT NULL,
    transaction_id TEXT NOT NULL,
    response BLOB NOT NULL,
    created_at_us INTEGER NOT NULL,
    PRIMARY KEY (client_id, idempotency_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    key BLOB NOT NULL,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    published_at_us INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (seq) WHERE published_at_us IS NULL;
"""

_STATUS_BY_OUTCOME = {
    Outcome.OUTCOME_APPROVE: TransactionStatus.TRANSACTION_STATUS_APPROVED,
    Outcome.OUTCOME_REVIEW: TransactionStatus.TRANSACTION_STATUS_IN_REVIEW,
    Outcome.OUTCOME_DECLINE: TransactionStatus.TRANSACTION_STATUS_DECLINED,
}


def status_for_outcome(outcome: Outcome.ValueType) -> TransactionStatus.ValueType:
    return _STATUS_BY_OUTCOME.get(outcome, TransactionStatus.TRANSACTION_STATUS_IN_REVIEW)


class SqliteStore:
    """One connection; not shared between threads (open one store per thread)."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 30_000) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE.
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=busy_timeout_ms / 1000)
        self._enable_wal(busy_timeout_ms / 1000)
        # FULL: a committed transaction survives power loss, not only a process crash.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def _enable_wal(self, timeout_seconds: float) -> None:
        """Switch a new database to WAL. Two connections switching at once (the API's writer and
        its relay opening a new store) can get "database is locked" without SQLite's busy
        handler being consulted, so the switch is retried here for as long as the busy timeout."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    @contextmanager
    def _write_transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE takes the write lock up front, so check-then-insert cannot race."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for read-only reports; writes go through the store methods."""
        return self._db

    def close(self) -> None:
        self._db.close()

    def record_transactions(
        self, batch: Sequence[NewTransaction]
    ) -> list[RecordOutcome | IdempotencyKeyReused]:
        results: list[RecordOutcome | IdempotencyKeyReused] = []
        db = self._db
        with self._write_transaction():
            for item in batch:
                row = db.execute(
                    "SELECT request_fingerprint, response FROM idempotency_keys "
                    "WHERE client_id = ? AND idempotency_key = ?",
                    (item.client_id, item.idempotency_key),
                ).fetchone()
                if row is not None:
                    if bytes(row[0]) != item.request_fingerprint:
                        results.append(IdempotencyKeyReused(item.client_id, item.idempotency_key))
                    else:
                        results.append(RecordOutcome(created=False, response=bytes(row[1])))
                    continue
                tx = item.transaction
                accepted_at_us = _timestamp_us(tx, "accepted_at")
                db.execute(
                    "INSERT INTO transactions (transaction_id, client_id, idempotency_key, "
                    "account_id, status, occurred_at_us, accepted_at_us, record) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        tx.transaction_id,
                        item.client_id,
                        item.idempotency_key,
                        tx.account_id,
                        int(tx.status),
                        _timestamp_us(tx, "occurred_at"),
                        accepted_at_us,
                        tx.SerializeToString(),
                    ),
                )
                db.execute(
                    "INSERT INTO idempotency_keys (client_id, idempotency_key, "
                    "request_fingerprint, transaction_id, response, created_at_us) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        item.client_id,
                        item.idempotency_key,
                        item.request_fingerprint,
                        tx.transaction_id,
                        item.response,
                        accepted_at_us,
                    ),
                )
                event = item.outbox_event
                db.execute(
                    "INSERT INTO outbox (event_id, topic, key, payload, headers, created_at_us) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        event.event_id,
                        event.topic,
                        event.key,
                        event.payload,
                        _encode_headers(event.headers),
                        accepted_at_us,
                    ),
                )
                results.append(RecordOutcome(created=True, response=item.response))
        return results

    def get_transaction(self, transaction_id: str) -> Transaction | None:
        row = self._db.execute(
            "SELECT record, status, decision FROM transactions WHERE transaction_id = ?",
            (transaction_id,),
        ).fetchone()
        if row is None:
            return None
        tx = Transaction.FromString(bytes(row[0]))
        tx.status = row[1]
        if row[2] is not None:
            tx.decision.ParseFromString(bytes(row[2]))
        return tx

    def pending_outbox(self, limit: int) -> list[PendingOutboxEvent]:
        rows = self._db.execute(
            "SELECT seq, event_id, topic, key, payload, headers, created_at_us FROM outbox "
            "WHERE published_at_us IS NULL ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            PendingOutboxEvent(
                seq=seq,
                event=OutboxEvent(
                    event_id=event_id,
                    topic=topic,
                    key=bytes(key),
                    payload=bytes(payload),
                    headers=_decode_headers(headers),
                ),
                created_at_us=created_at_us,
            )
            for seq, event_id, topic, key, payload, headers, created_at_us in rows
        ]

    def mark_published(self, seqs: Sequence[int], published_at_us: int) -> None:
        if not seqs:
            return
        db = self._db
        with self._write_transaction():
            db.executemany(
                "UPDATE outbox SET published_at_us = ? WHERE seq = ?",
                [(published_at_us, seq) for seq in seqs],
            )

    def prune_published(self, published_before_us: int) -> int:
        cursor = self._db.execute(
            "DELETE FROM outbox WHERE published_at_us IS NOT NULL AND published_at_us < ?",
            (published_before_us,),
        )
        return cursor.rowcount

    def outbox_backlog(self) -> OutboxBacklog:
        count, oldest = self._db.execute(
            "SELECT COUNT(*), MIN(created_at_us) FROM outbox WHERE published_at_us IS NULL"
        ).fetchone()
        return OutboxBacklog(count=int(count), oldest_created_at_us=oldest)

    def apply_decisions(
        self, decisions: Sequence[FraudDecision], applied_at_us: int
    ) -> list[DecisionApplied]:
        results: list[DecisionApplied] = []
        db = self._db
        with self._write_transaction():
            for decision in decisions:
                cursor = db.execute(
                    "UPDATE transactions SET status = ?, decision_id = ?, decision = ?, "
                    "score = ?, outcome = ?, decided_at_us = ?, applied_at_us = ? "
                    "WHERE transaction_id = ? AND decision_id IS NULL",
                    (
                        int(status_for_outcome(decision.outcome)),
                        decision.decision_id,
                        decision.SerializeToString(),
                        decision.score,
                        int(decision.outcome),
                        decision.decided_at.ToMicroseconds(),
                        applied_at_us,
                        decision.transaction_id,
                    ),
                )
                if cursor.rowcount == 1:
                    result = "applied"
                else:
                    exists = db.execute(
                        "SELECT 1 FROM transactions WHERE transaction_id = ?",
                        (decision.transaction_id,),
                    ).fetchone()
                    result = "duplicate" if exists else "unknown"
                results.append(DecisionApplied(decision.transaction_id, result))
        return results


@dataclass(frozen=True)
class AppliedDecisionRow:
    transaction_id: str
    accepted_at_us: int
    decided_at_us: int
    applied_at_us: int
    outcome: int


def applied_after(
    store: SqliteStore, applied_after_us: int, *, accepted_since_us: int
) -> list[AppliedDecisionRow]:
    """Decisions applied after a point in time, for progress views; oldest application first."""
    rows = store.connection.execute(
        "SELECT transaction_id, accepted_at_us, decided_at_us, applied_at_us, outcome "
        "FROM transactions WHERE applied_at_us > ? AND accepted_at_us >= ? ORDER BY applied_at_us",
        (applied_after_us, accepted_since_us),
    ).fetchall()
    return [AppliedDecisionRow(*row) for row in rows]


class SqliteRelayLock:
    """An exclusive lock file beside the database; the OS releases it when the holder dies."""

    def __init__(self, db_path: Path) -> None:
        self._path = db_path.with_name(db_path.name + ".relay.lock")
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _timestamp_us(tx: Transaction, field: str) -> int:
    stamp = getattr(tx, field)
    return int(stamp.ToMicroseconds())


def _encode_headers(headers: tuple[tuple[str, bytes], ...]) -> str:
    return json.dumps([[name, value.hex()] for name, value in headers])


def _decode_headers(raw: str) -> tuple[tuple[str, bytes], ...]:
    return tuple((str(name), bytes.fromhex(value)) for name, value in json.loads(raw))
