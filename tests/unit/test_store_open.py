"""Opening a SQLite store: from several connections at once (the API's writer and its relay do)
it never fails with "database is locked" while the database switches to WAL, and a store made by
an earlier version is brought up to date."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from txguard.store.sqlite import SqliteStore


def test_concurrent_first_opens_of_a_new_store_all_succeed(tmp_path: Path) -> None:
    failures: list[BaseException] = []
    for attempt in range(10):
        path = tmp_path / f"store-{attempt}.db"
        start = threading.Barrier(6)

        def open_store(path: Path = path, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                SqliteStore(path).close()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


def test_a_store_made_with_the_unused_account_index_loses_it_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE INDEX transactions_by_account ON transactions (account_id, occurred_at_us)"
        )
        db.execute(
            "INSERT INTO transactions (transaction_id, client_id, idempotency_key, account_id, "
            "status, occurred_at_us, accepted_at_us, record) "
            "VALUES ('t', 'c', 'k', 'a', 1, 0, 0, x'')"
        )
    db.close()
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    try:
        indexes = {
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert "transactions_by_account" not in indexes
        assert "transactions_by_applied" in indexes
        assert db.execute("SELECT transaction_id FROM transactions").fetchall() == [("t",)]
    finally:
        db.close()
