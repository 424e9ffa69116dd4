"""The group-commit writer marks the outbox events a relay of the same process hands over."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.support import new_transaction
from txguard.store.interface import PublishedEvents, RecordOutcome
from txguard.store.sqlite import SqliteStore
from txguard.transactions.writer import TransactionWriter


def published_at(path: Path) -> dict[int, int | None]:
    store = SqliteStore(path)
    try:
        rows = store.connection.execute("SELECT seq, published_at_us FROM outbox").fetchall()
    finally:
        store.close()
    return dict(rows)


def wait_for_marks(path: Path, expected: dict[int, int | None], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while published_at(path) != expected:
        assert time.monotonic() < deadline, published_at(path)
        time.sleep(0.01)


def test_the_writer_marks_handed_over_events_with_and_without_records(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    relay_side = SqliteStore(path)

    async def scenario() -> None:
        writer = TransactionWriter(lambda: SqliteStore(path), asyncio.get_running_loop())
        writer.start()
        try:
            first = await writer.record(new_transaction("acct-1"))
            assert isinstance(first, RecordOutcome)
            (seq,) = [p.seq for p in relay_side.pending_outbox(10)]
            handoff = relay_side.published_handoff()

            # Nothing else queued: the offer alone wakes the writer, which marks it.
            assert handoff.offer(PublishedEvents((seq,), 111))
            await asyncio.to_thread(wait_for_marks, path, {seq: 111})

            # Offered while records are queued: marked in the same batch transaction.
            second = new_transaction("acct-2")
            assert handoff.offer(PublishedEvents((seq,), 222))
            await writer.record(second)
            (later,) = [p.seq for p in relay_side.pending_outbox(10)]
            await asyncio.to_thread(wait_for_marks, path, {seq: 222, later: None})
            assert writer.records_written == 2
        finally:
            await asyncio.to_thread(writer.close)

    try:
        asyncio.run(scenario())
    finally:
        relay_side.close()


def test_a_closed_writer_marks_what_it_was_handed_and_refuses_more(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    relay_side = SqliteStore(path)
    relay_side.record_transactions([new_transaction("acct-c") for _ in range(3)])
    seqs = [p.seq for p in relay_side.pending_outbox(10)]
    handoff = relay_side.published_handoff()

    async def scenario() -> None:
        writer = TransactionWriter(lambda: SqliteStore(path), asyncio.get_running_loop())
        writer.start()
        # A second writer of the same store in this process does not take the relay's events
        # (had it taken them over, its close would have ended the handoff).
        other = TransactionWriter(lambda: SqliteStore(path), asyncio.get_running_loop())
        other.start()
        await asyncio.to_thread(other.close)
        assert handoff.offer(PublishedEvents((seqs[0],), 7))
        # Whether its last batch or its close() marks it, an accepted offer is marked.
        await asyncio.to_thread(writer.close)

    try:
        asyncio.run(scenario())
        assert not handoff.offer(PublishedEvents((seqs[1],), 8))
        assert published_at(path) == {seqs[0]: 7, seqs[1]: None, seqs[2]: None}
    finally:
        relay_side.close()
