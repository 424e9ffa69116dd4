"""The SQLite store's batch writes, relay reads and commit notification, on a real database file."""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import RING_FROM_ANOTHER_PROCESS, new_transaction
from txguard.clock import now_us, timestamp_from_us
from txguard.schema.v1.decision_pb2 import FraudDecision, Outcome
from txguard.schema.v1.service_pb2 import CreateTransactionResponse
from txguard.schema.v1.transaction_pb2 import TransactionStatus
from txguard.store.interface import (
    DecisionApplied,
    IdempotencyKeyReused,
    NewTransaction,
    PublishedEvents,
    RecordOutcome,
    StoreLocked,
)
from txguard.store.outbox_bell import OutboxBell
from txguard.store.sqlite import (
    ROWS_PER_STATEMENT,
    SqliteStore,
    _decode_headers,
    _encode_headers,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "store.db")
    yield store
    store.close()


def test_a_batch_larger_than_one_statement_is_stored_in_batch_order(store: SqliteStore) -> None:
    items = [new_transaction(f"acct-{i % 7}") for i in range(2 * ROWS_PER_STATEMENT + 5)]
    for index, item in enumerate(items):
        item.transaction.amount_minor = index + 1

    results = store.record_transactions(items)

    assert results == [RecordOutcome(created=True, response=_response(item)) for item in items]
    pending = store.pending_outbox(len(items) + 10)
    assert [p.event for p in pending] == [item.outbox_event for item in items]
    assert [p.seq for p in pending] == sorted(p.seq for p in pending)
    for item in items[:: ROWS_PER_STATEMENT // 2]:
        assert store.get_transaction(item.transaction.transaction_id) == item.transaction
    row = store.connection.execute(
        "SELECT accepted_at_us, occurred_at_us FROM transactions WHERE transaction_id = ?",
        (items[0].transaction.transaction_id,),
    ).fetchone()
    assert row == (
        items[0].transaction.accepted_at.ToMicroseconds(),
        items[0].transaction.occurred_at.ToMicroseconds(),
    )


def _response(item: NewTransaction) -> bytes:
    return CreateTransactionResponse(transaction=item.transaction).SerializeToString()


def test_replays_reuses_and_repeats_within_one_batch(store: SqliteStore) -> None:
    stored = new_transaction("acct-a")
    store.record_transactions([stored])
    fresh = new_transaction("acct-b")
    same_key_other_payload = dataclasses.replace(
        new_transaction("acct-c"),
        idempotency_key=stored.idempotency_key,
        request_fingerprint=b"another request",
    )
    fresh_retried = dataclasses.replace(
        new_transaction("acct-b"),
        idempotency_key=fresh.idempotency_key,
        request_fingerprint=fresh.request_fingerprint,
    )
    fresh_changed = dataclasses.replace(fresh_retried, request_fingerprint=b"changed")

    results = store.record_transactions(
        [stored, same_key_other_payload, fresh, fresh_retried, fresh_changed]
    )

    # A replay is answered with the stored transaction as it was accepted, not the retry's.
    assert results[0] == RecordOutcome(created=False, response=_response(stored))
    assert isinstance(results[1], IdempotencyKeyReused)
    assert results[2] == RecordOutcome(created=True, response=_response(fresh))
    # A repeat of a key earlier in the same batch is answered as a replay of that item.
    assert results[3] == RecordOutcome(created=False, response=_response(fresh))
    assert _response(fresh_retried) != _response(fresh)
    assert isinstance(results[4], IdempotencyKeyReused)
    # Only the two new transactions were written, each once.
    assert [p.event for p in store.pending_outbox(10)] == [
        stored.outbox_event,
        fresh.outbox_event,
    ]
    (count,) = store.connection.execute("SELECT COUNT(*) FROM transactions").fetchone()
    assert count == 2


def test_mark_published_marks_exactly_the_given_events(store: SqliteStore) -> None:
    store.record_transactions([new_transaction("acct-m") for _ in range(10)])
    pending = store.pending_outbox(10)
    marked = [pending[i].seq for i in (0, 1, 2, 5, 7, 8)]

    store.mark_published(marked, 1234)

    assert [p.seq for p in store.pending_outbox(10)] == [pending[i].seq for i in (3, 4, 6, 9)]
    rows = store.connection.execute(
        "SELECT seq FROM outbox WHERE published_at_us = 1234 ORDER BY seq"
    ).fetchall()
    assert [seq for (seq,) in rows] == marked


def test_pending_outbox_reads_the_oldest_events_up_to_the_limit(store: SqliteStore) -> None:
    items = [new_transaction("acct-p") for _ in range(5)]
    store.record_transactions(items)

    assert [p.event for p in store.pending_outbox(3)] == [i.outbox_event for i in items[:3]]
    assert store.pending_outbox(0) == []


def _wakes_a_waiting_relay(relay_side: SqliteStore, act: Callable[[], object]) -> bool:
    """Whether `act()` ends a relay's wait for outbox events: the wait is an hour long, so only
    a notification ends it before the join's minute is up."""
    woken: list[bool] = []
    waiter = threading.Thread(target=lambda: woken.append(relay_side.wait_for_outbox(3600)))
    waiter.start()
    act()
    waiter.join(timeout=60)
    return woken == [True]


def test_a_commit_wakes_a_waiting_relay_connection_of_the_same_store(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    writer, relay_side = SqliteStore(path), SqliteStore(path)
    elsewhere = SqliteStore(tmp_path / "other.db")
    try:
        # Nothing committed yet: not notified (wait(0) only reads the signal).
        assert not relay_side.wait_for_outbox(0)
        assert _wakes_a_waiting_relay(
            relay_side, lambda: writer.record_transactions([new_transaction("acct-w")])
        )
        # The wait reset the signal; a store at another path was never notified.
        assert not relay_side.wait_for_outbox(0)
        assert not elsewhere.wait_for_outbox(0)
    finally:
        writer.close()
        relay_side.close()
        elsewhere.close()


def test_a_commit_beside_its_listening_relay_wakes_it_without_ringing_the_bell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.db"
    rings: list[OutboxBell] = []
    ring = OutboxBell.ring

    def counted_ring(bell: OutboxBell) -> None:
        rings.append(bell)
        ring(bell)

    monkeypatch.setattr(OutboxBell, "ring", counted_ring)
    writer, relay_side = SqliteStore(path), SqliteStore(path)
    try:
        assert not relay_side.wait_for_outbox(0)  # The relay listens from its first wait.
        assert _wakes_a_waiting_relay(
            relay_side, lambda: writer.record_transactions([new_transaction("acct-beside")])
        )
        # The bell's socket (two system calls and a thread switch per commit) is for other
        # processes only.
        assert rings == []
    finally:
        writer.close()
        relay_side.close()


def test_a_ring_from_another_process_wakes_the_relay_through_the_bell(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    relay_side = SqliteStore(path)
    try:
        assert not relay_side.wait_for_outbox(0)
        # The other process only rings.
        command = [sys.executable, "-c", RING_FROM_ANOTHER_PROCESS, str(path)]
        assert _wakes_a_waiting_relay(
            relay_side, lambda: subprocess.run(command, check=True, timeout=60)
        )
    finally:
        relay_side.close()


def test_a_relay_whose_bell_another_process_holds_is_woken_by_this_process_s_commits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.db"
    squatter = OutboxBell(path)  # stands in for another process listening on the store's bell
    assert squatter.listen()
    writer, relay_side = SqliteStore(path), SqliteStore(path)
    try:
        with caplog.at_level(logging.WARNING, logger="txguard.store.outbox_bell"):
            assert not relay_side.wait_for_outbox(0)
        assert "taken by another process" in caplog.text
        assert _wakes_a_waiting_relay(
            relay_side, lambda: writer.record_transactions([new_transaction("acct-squat")])
        )
    finally:
        writer.close()
        relay_side.close()
        squatter.close()


def test_a_batch_of_only_replays_does_not_notify(store: SqliteStore, tmp_path: Path) -> None:
    item = new_transaction("acct-r")
    store.record_transactions([item])
    assert store.wait_for_outbox(0)

    store.record_transactions([item])

    assert not store.wait_for_outbox(0)


def test_checkpoint_moves_the_write_ahead_log_into_the_database(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    # Auto-checkpoint off, so that only the explicit checkpoint moves anything.
    writer = SqliteStore(path, autocheckpoint_pages=0)
    checkpointer = SqliteStore(path)
    try:
        writer.record_transactions([new_transaction("acct-c") for _ in range(50)])
        size_before = path.stat().st_size
        checkpointer.checkpoint()
        # The pages went from the log into the database file (closing would move them too).
        assert path.stat().st_size > size_before
    finally:
        writer.close()
        checkpointer.close()


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """A second connection inside BEGIN IMMEDIATE: it holds the write lock until it ends."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_a_write_waits_for_the_lock_and_goes_through_once_it_is_free(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    holder = hold_write_lock(path)
    releaser = threading.Timer(0.2, holder.execute, ("COMMIT",))
    try:
        releaser.start()
        # Waits (more than SQLite's 1 ms per attempt, many retries) and then writes.
        store.record_transactions([new_transaction("acct-l")])
        assert store.outbox_backlog().count == 1
    finally:
        releaser.join()
        holder.close()
        store.close()


def test_a_write_gives_up_with_store_locked_after_the_lock_timeout(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path, lock_timeout_seconds=0.3)
    holder = hold_write_lock(path)
    try:
        with pytest.raises(StoreLocked, match=r"write lock of store .*stayed taken") as raised:
            store.record_transactions([new_transaction("acct-t")])
        assert raised.value.waited_seconds >= 0.3
        assert str(path) in str(raised.value)
        holder.execute("ROLLBACK")
        # Nothing of the failed batch was kept, and the connection is usable again.
        assert store.outbox_backlog().count == 0
        store.mark_published([1], 1)
    finally:
        holder.close()
        store.close()


def test_published_events_are_marked_in_the_batch_transaction(store: SqliteStore) -> None:
    store.record_transactions([new_transaction("acct-h") for _ in range(4)])
    first, second, third, fourth = (p.seq for p in store.pending_outbox(10))
    later = new_transaction("acct-h")

    store.record_transactions(
        [later], [PublishedEvents((first, second), 11), PublishedEvents((fourth,), 12)]
    )
    # Marks alone, without any transaction to record.
    store.record_transactions([], [PublishedEvents((third,), 13)])

    assert [p.event for p in store.pending_outbox(10)] == [later.outbox_event]
    rows = store.connection.execute(
        "SELECT seq, published_at_us FROM outbox WHERE published_at_us IS NOT NULL ORDER BY seq"
    ).fetchall()
    assert rows == [(first, 11), (second, 11), (third, 13), (fourth, 12)]


def test_pending_outbox_reads_after_the_given_seq(store: SqliteStore) -> None:
    items = [new_transaction("acct-a") for _ in range(5)]
    store.record_transactions(items)
    seqs = [p.seq for p in store.pending_outbox(10)]

    assert [p.event for p in store.pending_outbox(10, after_seq=seqs[1])] == [
        item.outbox_event for item in items[2:]
    ]
    assert store.pending_outbox(10, after_seq=seqs[-1]) == []


def _decision(transaction_id: str, outcome: Outcome.ValueType, score: float) -> FraudDecision:
    return FraudDecision(
        decision_id=str(uuid.uuid4()),
        transaction_id=transaction_id,
        score=score,
        outcome=outcome,
        decided_at=timestamp_from_us(now_us()),
    )


def test_apply_decisions_first_decision_wins_across_and_within_batches(store: SqliteStore) -> None:
    # More than one statement's worth, so that the chunking is exercised too.
    items = [new_transaction(f"acct-{i}") for i in range(300)]
    store.record_transactions(items)
    ids = [item.transaction.transaction_id for item in items]
    already = _decision(ids[0], Outcome.OUTCOME_DECLINE, 0.9)
    assert store.apply_decisions([already], 100) == [DecisionApplied(ids[0], "applied")]
    batch = [
        _decision(ids[0], Outcome.OUTCOME_APPROVE, 0.1),  # decided in an earlier batch
        *(_decision(tx_id, Outcome.OUTCOME_REVIEW, 0.6) for tx_id in ids[1:]),
        _decision(ids[1], Outcome.OUTCOME_APPROVE, 0.2),  # a second one in this batch
        _decision("no-such-transaction", Outcome.OUTCOME_APPROVE, 0.1),
        _decision("no-such-transaction", Outcome.OUTCOME_APPROVE, 0.1),
    ]

    results = store.apply_decisions(batch, 200)

    assert [r.result for r in results] == (
        ["duplicate"] + ["applied"] * (len(ids) - 1) + ["duplicate", "unknown", "unknown"]
    )
    assert [r.transaction_id for r in results] == [d.transaction_id for d in batch]
    first = store.get_transaction(ids[0])
    assert first is not None
    assert first.status == TransactionStatus.TRANSACTION_STATUS_DECLINED
    assert first.decision == already
    second = store.get_transaction(ids[1])
    assert second is not None
    assert second.status == TransactionStatus.TRANSACTION_STATUS_IN_REVIEW
    assert second.decision == batch[1]
    row = store.connection.execute(
        "SELECT score, outcome, decided_at_us, applied_at_us, decision_id FROM transactions "
        "WHERE transaction_id = ?",
        (ids[-1],),
    ).fetchone()
    assert row == (
        0.6,
        Outcome.OUTCOME_REVIEW,
        batch[len(ids) - 1].decided_at.ToMicroseconds(),
        200,
        batch[len(ids) - 1].decision_id,
    )


@given(st.lists(st.tuples(st.text(), st.binary())).map(tuple))
def test_stored_headers_are_the_json_the_library_writes_and_read_back_unchanged(
    headers: tuple[tuple[str, bytes], ...],
) -> None:
    # Stores written before the direct encoding hold json.dumps' text: both must read alike.
    assert _encode_headers(headers) == json.dumps([[name, value.hex()] for name, value in headers])
    assert _decode_headers(_encode_headers(headers)) == headers


# The idempotency table of stores made before the response was written from the record.
_LEGACY_IDEMPOTENCY_TABLE = """
CREATE TABLE idempotency_keys (
    client_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_fingerprint BLOB NOT NULL,
    transaction_id TEXT NOT NULL,
    response BLOB NOT NULL,
    created_at_us INTEGER NOT NULL,
    PRIMARY KEY (client_id, idempotency_key)
) WITHOUT ROWID;
"""


def test_a_store_with_the_old_response_column_still_records_and_replays(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(_LEGACY_IDEMPOTENCY_TABLE)
    old = new_transaction("acct-old")
    store = SqliteStore(path)
    try:
        # A row as the earlier version wrote it, response included.
        store.record_transactions([old])
        store.connection.execute(
            "UPDATE idempotency_keys SET response = ? WHERE idempotency_key = ?",
            (_response(old), old.idempotency_key),
        )
        new = new_transaction("acct-new")

        results = store.record_transactions([old, new])

        assert results == [
            RecordOutcome(created=False, response=_response(old)),
            RecordOutcome(created=True, response=_response(new)),
        ]
        assert store.record_transactions([new]) == [
            RecordOutcome(created=False, response=_response(new))
        ]
        written = store.connection.execute(
            "SELECT response FROM idempotency_keys WHERE idempotency_key = ?",
            (new.idempotency_key,),
        ).fetchone()
        assert written == (b"",)
    finally:
        store.close()


def test_a_new_store_keeps_no_second_copy_of_the_response(store: SqliteStore) -> None:
    columns = {row[1] for row in store.connection.execute("PRAGMA table_info(idempotency_keys)")}
    assert "response" not in columns
