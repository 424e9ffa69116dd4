"""SQLite (WAL) backend: the embedded default store, zero set-up.

Python's sqlite3 releases the GIL around every step of a statement (each row written or read)
and must take it back afterwards; while another thread of the process (the API's event loop)
runs Python, each take-back can wait up to the interpreter's switch interval (5 ms). So the hot
paths here write a whole batch with one multi-row statement per table and read a relay round as
one row: a few steps per batch instead of several per transaction.

The write lock is taken by `_write_transaction`: BEGIN IMMEDIATE with a 1 ms wait inside SQLite
(its busy handler, which would otherwise sleep up to 100 ms between tries once a wait grows, long
after the lock came free), retried from Python with short sleeps until the lock deadline.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import TypeVar

from txguard.schema.responses import create_transaction_response
from txguard.schema.v1.decision_pb2 import FraudDecision, Outcome
from txguard.schema.v1.transaction_pb2 import Transaction, TransactionStatus
from txguard.store.interface import (
    DecisionApplied,
    IdempotencyKeyReused,
    NewTransaction,
    OutboxBacklog,
    OutboxEvent,
    PendingOutboxEvent,
    PublishedEvents,
    PublishedHandoff,
    RecordOutcome,
    StoreLocked,
)
from txguard.store.outbox_bell import OutboxBell

log = logging.getLogger(__name__)

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
-- Stores made before it was dropped had an index by account that no query used; each insert
-- dirtied one of its pages at random.
DROP INDEX IF EXISTS transactions_by_account;
CREATE INDEX IF NOT EXISTS transactions_by_applied ON transactions (applied_at_us)
    WHERE applied_at_us IS NOT NULL;
-- A replay's response is written from the transaction's record, not stored here a second time:
-- client keys are random, so each insert lands on a page of its own, and a small row keeps
-- the pages that a commit writes few and the table's hot part in cache. Stores made before
-- have a `response` column; it is written empty.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    client_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_fingerprint BLOB NOT NULL,
    transaction_id TEXT NOT NULL,
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


# SQLite's default WAL auto-checkpoint threshold (pages). A writer whose WAL is checkpointed by
# another thread raises it, keeping it only as a bound on the WAL should that thread fall behind.
DEFAULT_AUTOCHECKPOINT_PAGES = 1000
# Page cache per connection (KiB; grows only as pages are used): the random-order index of
# idempotency keys is re-read from the OS on every insert with the 2 MiB default.
_CACHE_KIB = 64 * 1024
# Rows per multi-row statement: 8 columns x 64 rows stays under SQLite's historical limit of 999
# bound parameters, and the few statement shapes this gives all fit the statement cache.
ROWS_PER_STATEMENT = 64
_STATEMENT_CACHE_SIZE = 512
# 7 columns x 128 rows (+1) stays under 999 bound parameters.
_DECISION_ROWS_PER_STATEMENT = 128
# How long one attempt at the write lock waits inside SQLite: its busy handler sleeps 1 ms (without
# the GIL) and tries once more. Longer waits there grow to 100 ms sleeps, far longer than any hold.
_LOCK_ATTEMPT_WAIT_MS = 1
# Python-level sleeps between attempts (the last repeats until the deadline): a waiter retries
# within about 1-3 ms of the lock coming free, and at most some hundred times a second.
_LOCK_RETRY_SLEEPS = (0.0002, 0.0005, 0.001, 0.002)
DEFAULT_LOCK_TIMEOUT_SECONDS = 30.0
# How often a relay whose outbox bell is taken (or missing) tries to listen to it again.
_BELL_RETRY_SECONDS = 5.0
# How often the bell's thread checks that its store is still open in this process.
_BELL_THREAD_CHECK_SECONDS = 1.0


def status_for_outcome(outcome: Outcome.ValueType) -> TransactionStatus.ValueType:
    return _STATUS_BY_OUTCOME.get(outcome, TransactionStatus.TRANSACTION_STATUS_IN_REVIEW)


class OutboxSignal:
    """Wakes the relay publishing this store as soon as a commit has added outbox events.

    The relay waits on an event. A commit in the relay's own process sets it; a commit in a
    process without a listening relay rings the store's `OutboxBell` instead, and the relay
    listening on the bell (in any process, `txguard serve relay` included) has a thread that sets
    its event for every ring. A commit beside its relay thus costs no system call and the relay
    one wake-up; the bell's socket is used only between processes. Without a bell (no abstract
    sockets here, or another process listens), the relay is woken by its own process's commits
    and finds others' by polling.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._event = threading.Event()
        self._bell = OutboxBell(path)
        # A bell that could not be listened to is tried again at most this often.
        self._listen_again_at = 0.0

    def notify(self) -> None:
        self._event.set()
        bell = self._bell
        if not bell.listening:  # A relay of this process hears the event.
            bell.ring()

    def wait(self, timeout: float) -> bool:
        """Wait until notified (or `timeout`); True if notified. Resets the signal.

        A commit notified before the reset is read by the caller's next read, one after it wakes
        the next wait: no commit goes unnoticed. Rings from before the relay listened were not
        heard: another process's commits from then are found by the caller's next read too.
        """
        if not self._bell.listening and time.monotonic() >= self._listen_again_at:
            self._listen()
        notified = self._event.wait(timeout)
        self._event.clear()
        return notified

    def _listen(self) -> None:
        bell = self._bell
        try:
            listening = bell.listen()
        except OSError as exc:
            self._bell_failed(bell, exc)
            return
        if not listening:
            self._listen_again_at = time.monotonic() + _BELL_RETRY_SECONDS
            return
        threading.Thread(
            target=_pass_rings_on,
            args=(weakref.ref(self), bell),
            name="txguard-outbox-bell",
            daemon=True,
        ).start()

    def _bell_failed(self, bell: OutboxBell, error: OSError) -> None:
        """The bell broke (listening to it, or while listened to): the relay polls, and listens
        to a new bell later."""
        log.warning("outbox bell failed (%s); polling instead", error)
        bell.close()
        self._bell = OutboxBell(self._path)
        self._listen_again_at = time.monotonic() + _BELL_RETRY_SECONDS


def _pass_rings_on(signal_ref: weakref.ref[OutboxSignal], bell: OutboxBell) -> None:
    """The bell's thread: every ring sets the relay's event. Ends (and stops listening) once the
    signal is gone, i.e. no store of this path is open in this process any more."""
    while True:
        try:
            rung = bell.wait(_BELL_THREAD_CHECK_SECONDS)
        except (OSError, RuntimeError) as exc:
            signal = signal_ref()
            if signal is not None and isinstance(exc, OSError) and signal._bell is bell:
                signal._bell_failed(bell, exc)
            return
        signal = signal_ref()
        if signal is None or signal._bell is not bell:
            bell.close()
            return
        if rung:
            signal._event.set()
        del signal


_signals: weakref.WeakValueDictionary[str, OutboxSignal] = weakref.WeakValueDictionary()
_handoffs: weakref.WeakValueDictionary[str, PublishedHandoff] = weakref.WeakValueDictionary()
_signals_lock = threading.Lock()


def outbox_signal(path: Path) -> OutboxSignal:
    """The one signal of the store at `path` in this process, shared by all its connections."""
    return _one_per_store(_signals, path, partial(OutboxSignal, path))


def published_handoff(path: Path) -> PublishedHandoff:
    """The one published-events handoff of the store at `path` in this process."""
    return _one_per_store(_handoffs, path, PublishedHandoff)


_Shared = TypeVar("_Shared")


def _one_per_store(
    registry: weakref.WeakValueDictionary[str, _Shared], path: Path, make: Callable[[], _Shared]
) -> _Shared:
    key = str(path.resolve())
    with _signals_lock:
        shared = registry.get(key)
        if shared is None:
            shared = registry[key] = make()
        return shared


class SqliteStore:
    """One connection; not shared between threads (open one store per thread)."""

    def __init__(
        self,
        path: Path,
        *,
        lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
        autocheckpoint_pages: int = DEFAULT_AUTOCHECKPOINT_PAGES,
    ) -> None:
        """`lock_timeout_seconds`: how long a write waits for the write lock before it fails
        with StoreLocked."""
        self.path = path
        self._lock_timeout = lock_timeout_seconds
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE. While
        # opening, SQLite's own busy handler waits up to the whole lock timeout (a new database's
        # schema, a crashed one's recovery).
        self._db = sqlite3.connect(
            str(path),
            isolation_level=None,
            timeout=lock_timeout_seconds,
            cached_statements=_STATEMENT_CACHE_SIZE,
        )
        self._enable_wal(lock_timeout_seconds)
        # FULL: a committed transaction survives power loss, not only a process crash.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        # A multi-row INSERT's statement journal outgrows SQLite's in-memory threshold and would
        # otherwise be a temporary file created, written and deleted in every batch transaction.
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._db.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint_pages)}")
        self._db.executescript(SCHEMA)
        # A store made before the response column was dropped gets it written empty.
        self._insert_requests = (
            (_INSERT_REQUESTS_WITH_RESPONSE, ",x''")
            if self._has_response_column()
            else (_INSERT_REQUESTS, "")
        )
        # From now on writes wait for the lock in `_begin_immediate`; reads never wait in WAL.
        self._db.execute(f"PRAGMA busy_timeout={_LOCK_ATTEMPT_WAIT_MS}")
        self._outbox_signal = outbox_signal(path)
        self._handoff = published_handoff(path)

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

    def _has_response_column(self) -> bool:
        columns = self._db.execute("PRAGMA table_info(idempotency_keys)").fetchall()
        return any(column[1] == "response" for column in columns)

    @contextmanager
    def _write_transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE takes the write lock up front, so check-then-insert cannot race."""
        self._begin_immediate()
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _begin_immediate(self) -> None:
        """Take the write lock, retrying with short sleeps; StoreLocked after the lock timeout."""
        begin = self._db.execute
        try:
            begin("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        started = time.monotonic()
        deadline = started + self._lock_timeout
        attempt = 0
        while True:
            time.sleep(_LOCK_RETRY_SLEEPS[min(attempt, len(_LOCK_RETRY_SLEEPS) - 1)])
            attempt += 1
            try:
                begin("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                now = time.monotonic()
                if now >= deadline:
                    raise StoreLocked(str(self.path), now - started) from exc

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for read-only reports; writes go through the store methods."""
        return self._db

    def close(self) -> None:
        self._db.close()

    def record_transactions(
        self, batch: Sequence[NewTransaction], published: Sequence[PublishedEvents] = ()
    ) -> list[RecordOutcome | IdempotencyKeyReused]:
        results: list[RecordOutcome | IdempotencyKeyReused] = []
        # Each new item with its transaction's record.
        new: list[tuple[NewTransaction, bytes]] = []
        with self._write_transaction():
            for events in published:
                self._mark(events.seqs, events.published_at_us)
            stored = self._stored_requests(batch)
            for item in batch:
                request = (item.client_id, item.idempotency_key)
                known = stored.get(request)
                if known is not None:
                    fingerprint, response = known
                    if fingerprint != item.request_fingerprint:
                        results.append(IdempotencyKeyReused(item.client_id, item.idempotency_key))
                    else:
                        results.append(RecordOutcome(created=False, response=response))
                    continue
                record = item.transaction.SerializeToString()
                response = create_transaction_response(record)
                # A later item of this batch with the same key replays this one.
                stored[request] = (item.request_fingerprint, response)
                new.append((item, record))
                results.append(RecordOutcome(created=True, response=response))
            for start in range(0, len(new), ROWS_PER_STATEMENT):
                self._insert_new(new[start : start + ROWS_PER_STATEMENT])
        if new:
            self._outbox_signal.notify()
        return results

    def _stored_requests(
        self, batch: Sequence[NewTransaction]
    ) -> dict[tuple[str, str], tuple[bytes, bytes]]:
        """(fingerprint, response) of each request of `batch` already stored, by (client, key)."""
        stored: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        for start in range(0, len(batch), ROWS_PER_STATEMENT):
            chunk = batch[start : start + ROWS_PER_STATEMENT]
            params: list[str] = []
            for item in chunk:
                params += (item.client_id, item.idempotency_key)
            rows = self._db.execute(_stored_requests_sql(len(chunk)), params).fetchall()
            for client_id, key, fingerprint, record in rows:
                stored[(client_id, key)] = (
                    bytes(fingerprint),
                    create_transaction_response(bytes(record)),
                )
        return stored

    def _insert_new(self, chunk: Sequence[tuple[NewTransaction, bytes]]) -> None:
        """The transaction rows, idempotency records and outbox events of `chunk`, in its order
        (the outbox's seq, the relay's publishing order, follows it)."""
        transactions: list[object] = []
        requests: list[object] = []
        events: list[object] = []
        for item, record in chunk:
            tx = item.transaction
            accepted_at_us = tx.accepted_at.seconds * 1_000_000 + tx.accepted_at.nanos // 1000
            occurred_at_us = tx.occurred_at.seconds * 1_000_000 + tx.occurred_at.nanos // 1000
            transactions += (
                tx.transaction_id,
                item.client_id,
                item.idempotency_key,
                tx.account_id,
                int(tx.status),
                occurred_at_us,
                accepted_at_us,
                record,
            )
            requests += (
                item.client_id,
                item.idempotency_key,
                item.request_fingerprint,
                tx.transaction_id,
                accepted_at_us,
            )
            event = item.outbox_event
            events += (
                event.event_id,
                event.topic,
                event.key,
                event.payload,
                _encode_headers(event.headers),
                accepted_at_us,
            )
        rows = len(chunk)
        db = self._db
        db.execute(_insert_sql(_INSERT_TRANSACTIONS, 8, rows), transactions)
        requests_head, requests_tail = self._insert_requests
        db.execute(_insert_sql(requests_head, 5, rows, requests_tail), requests)
        db.execute(_insert_sql(_INSERT_EVENTS, 6, rows), events)

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

    def pending_outbox(self, limit: int, after_seq: int = 0) -> list[PendingOutboxEvent]:
        # One row for the whole round (blobs as hex inside JSON): one step instead of one per event.
        (round_json,) = self._db.execute(_PENDING_OUTBOX_SQL, (after_seq, limit)).fetchone()
        pending = [
            PendingOutboxEvent(
                seq=seq,
                event=OutboxEvent(
                    event_id=event_id,
                    topic=topic,
                    key=bytes.fromhex(key),
                    payload=bytes.fromhex(payload),
                    headers=tuple((name, bytes.fromhex(value)) for name, value in headers),
                ),
                created_at_us=created_at_us,
            )
            for seq, event_id, topic, key, payload, headers, created_at_us in json.loads(round_json)
        ]
        # The aggregate keeps the subquery's order in practice; commit order must not rely on it.
        pending.sort(key=_by_seq)
        return pending

    def mark_published(self, seqs: Sequence[int], published_at_us: int) -> None:
        if not seqs:
            return
        with self._write_transaction():
            self._mark(seqs, published_at_us)

    def _mark(self, seqs: Sequence[int], published_at_us: int) -> None:
        if not seqs:
            return
        # One UPDATE per run of consecutive seqs: a whole round is usually one run.
        self._db.executemany(
            "UPDATE outbox SET published_at_us = ? WHERE seq BETWEEN ? AND ?",
            [(published_at_us, first, last) for first, last in _runs(seqs)],
        )

    def published_handoff(self) -> PublishedHandoff:
        return self._handoff

    def wait_for_outbox(self, timeout: float) -> bool:
        return self._outbox_signal.wait(timeout)

    def checkpoint(self) -> None:
        # PASSIVE: copies what no reader still needs, never waits for or blocks the writer.
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def prune_published(self, published_before_us: int) -> int:
        with self._write_transaction():
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
        # Everything but the statements is prepared before the write lock is taken.
        first: dict[str, list[object]] = {}
        for decision in decisions:
            if decision.transaction_id not in first:
                first[decision.transaction_id] = [
                    decision.transaction_id,
                    int(status_for_outcome(decision.outcome)),
                    decision.decision_id,
                    decision.SerializeToString(),
                    decision.score,
                    int(decision.outcome),
                    decision.decided_at.ToMicroseconds(),
                ]
        rows = list(first.values())
        applied: set[str] = set()
        known: set[str] = set()
        db = self._db
        with self._write_transaction():
            for start in range(0, len(rows), _DECISION_ROWS_PER_STATEMENT):
                chunk = rows[start : start + _DECISION_ROWS_PER_STATEMENT]
                params: list[object] = [applied_at_us]
                for row in chunk:
                    params += row
                cursor = db.execute(_apply_decisions_sql(len(chunk)), params)
                applied.update(transaction_id for (transaction_id,) in cursor)
            missed = [transaction_id for transaction_id in first if transaction_id not in applied]
            for start in range(0, len(missed), _DECISION_ROWS_PER_STATEMENT):
                chunk_ids = missed[start : start + _DECISION_ROWS_PER_STATEMENT]
                cursor = db.execute(_known_transactions_sql(len(chunk_ids)), chunk_ids)
                known.update(transaction_id for (transaction_id,) in cursor)
        results: list[DecisionApplied] = []
        for decision in decisions:
            transaction_id = decision.transaction_id
            if transaction_id in applied:
                # Only the batch's first decision of a transaction was written; later ones are
                # duplicates, as they would be in a later batch.
                applied.discard(transaction_id)
                known.add(transaction_id)
                result = "applied"
            else:
                result = "duplicate" if transaction_id in known else "unknown"
            results.append(DecisionApplied(transaction_id, result))
        return results


@dataclass(frozen=True, slots=True)
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


_INSERT_TRANSACTIONS = (
    "INSERT INTO transactions (transaction_id, client_id, idempotency_key, account_id, status, "
    "occurred_at_us, accepted_at_us, record) VALUES "
)
_INSERT_REQUESTS = (
    "INSERT INTO idempotency_keys (client_id, idempotency_key, request_fingerprint, "
    "transaction_id, created_at_us) VALUES "
)
_INSERT_REQUESTS_WITH_RESPONSE = _INSERT_REQUESTS.replace(
    "created_at_us)", "created_at_us, response)"
)
_INSERT_EVENTS = (
    "INSERT INTO outbox (event_id, topic, key, payload, headers, created_at_us) VALUES "
)
_APPLY_DECISIONS_HEAD = (
    "UPDATE transactions SET status = v.column2, decision_id = v.column3, decision = v.column4, "
    "score = v.column5, outcome = v.column6, decided_at_us = v.column7, applied_at_us = ?1 FROM "
    "(VALUES "
)
_KNOWN_TRANSACTIONS_HEAD = "SELECT transaction_id FROM transactions WHERE transaction_id IN ("
_STORED_REQUESTS_HEAD = (
    "SELECT i.client_id, i.idempotency_key, i.request_fingerprint, t.record FROM (VALUES "
)
_PENDING_OUTBOX_SQL = (
    "SELECT json_group_array(json_array(seq, event_id, topic, hex(key), hex(payload), "
    "json(headers), created_at_us)) FROM (SELECT * FROM outbox WHERE published_at_us IS NULL "
    "AND seq > ? ORDER BY seq LIMIT ?)"
)


@cache
def _apply_decisions_sql(rows: int) -> str:
    # One statement for the whole chunk, joined from the literal rows by primary key; RETURNING
    # names the transactions it decided (those without a decision yet).
    return (
        _APPLY_DECISIONS_HEAD
        + ",".join(["(?,?,?,?,?,?,?)"] * rows)
        + ") AS v WHERE transactions.transaction_id = v.column1 "
        "AND transactions.decision_id IS NULL RETURNING transactions.transaction_id"
    )


@cache
def _known_transactions_sql(rows: int) -> str:
    return _KNOWN_TRANSACTIONS_HEAD + ",".join("?" * rows) + ")"


@cache
def _insert_sql(head: str, columns: int, rows: int, tail: str = "") -> str:
    """`head` and `rows` rows of `columns` parameters each, then `tail` (literals) in each row."""
    row = "(" + ",".join("?" * columns) + tail + ")"
    return head + ",".join([row] * rows)


@cache
def _stored_requests_sql(rows: int) -> str:
    # A join from the literal rows, so each is one primary-key search (`IN (VALUES ...)` scans).
    return (
        _STORED_REQUESTS_HEAD
        + ",".join(["(?,?)"] * rows)
        + ") AS v CROSS JOIN idempotency_keys AS i "
        "ON i.client_id = v.column1 AND i.idempotency_key = v.column2 "
        "JOIN transactions AS t ON t.transaction_id = i.transaction_id"
    )


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    # The primary code: SQLITE_BUSY_* extended codes are busy too.
    return exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY


def _by_seq(item: PendingOutboxEvent) -> int:
    return item.seq


def _runs(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Runs of consecutive integers of `seqs`, as (first, last)."""
    runs: list[tuple[int, int]] = []
    ordered = sorted(seqs)
    first = last = ordered[0]
    for seq in ordered[1:]:
        if seq != last + 1:
            runs.append((first, last))
            first = seq
        last = seq
    runs.append((first, last))
    return runs


def _encode_headers(headers: tuple[tuple[str, bytes], ...]) -> str:
    """`json.dumps([[name, value.hex()], ...])`, character for character, written directly:
    hex needs no escaping, and the few header names are JSON-encoded once each."""
    return (
        "[" + ", ".join([f'[{_json_name(name)}, "{value.hex()}"]' for name, value in headers]) + "]"
    )


@cache
def _json_name(name: str) -> str:
    return json.dumps(name)


def _decode_headers(raw: str) -> tuple[tuple[str, bytes], ...]:
    return tuple((str(name), bytes.fromhex(value)) for name, value in json.loads(raw))
