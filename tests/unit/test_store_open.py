"""Opening a new SQLite store from several connections at once (the API's writer and its relay
do) never fails with "database is locked" while the database switches to WAL."""

from __future__ import annotations

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
