"""The detector's copy of the terminal-risk table: windows, labels known in time, completeness."""

from __future__ import annotations

from txguard.fraud.terminal_table import (
    NOT_STARTED_MS,
    Completeness,
    TerminalTable,
    entry_key,
    watermark_key,
)
from txguard.schema.v1.terminal_risk_pb2 import (
    TerminalRiskEntry,
    TerminalTableRecord,
    TerminalTableWatermark,
)


def put(table: TerminalTable, tx: str, occurred: int, known: int = 0, partition: int = 0) -> None:
    entry = TerminalRiskEntry(
        terminal_id="T1", transaction_id=tx, occurred_at_ms=occurred, fraud_known_at_ms=known
    )
    table.apply(
        partition, entry_key("T1", tx), TerminalTableRecord(entry=entry).SerializeToString()
    )


def mark(table: TerminalTable, partition: int, transactions: int, labels: int) -> None:
    record = TerminalTableRecord(
        watermark=TerminalTableWatermark(
            partition=partition,
            transactions_complete_until_ms=transactions,
            labels_complete_until_ms=labels,
        )
    )
    table.apply(partition, watermark_key(partition), record.SerializeToString())


def test_window_is_half_open_and_counts_only_labels_known_in_time() -> None:
    table = TerminalTable()
    put(table, "a", 100, known=500)
    put(table, "b", 200, known=900)
    put(table, "c", 300)
    # (100, 300]: b and c; b's fraud is known at 900, not yet at 800.
    assert table.window("T1", after_ms=100, until_ms=300, known_by_ms=800) == (2, 0)
    assert table.window("T1", after_ms=100, until_ms=300, known_by_ms=900) == (2, 1)
    assert table.window("T1", after_ms=99, until_ms=300, known_by_ms=900) == (3, 2)
    assert table.window("T2", after_ms=0, until_ms=1_000, known_by_ms=1_000) == (0, 0)


def test_a_later_record_for_the_same_transaction_replaces_it_and_a_tombstone_deletes_it() -> None:
    table = TerminalTable()
    put(table, "a", 100)
    put(table, "a", 100, known=150)  # its label arrived
    assert table.window("T1", after_ms=0, until_ms=100, known_by_ms=200) == (1, 1)
    table.apply(0, entry_key("T1", "a"), None)
    assert table.window("T1", after_ms=0, until_ms=100, known_by_ms=200) == (0, 0)
    assert table.terminal_count == 0


def test_completeness_is_the_least_advanced_partition_and_never_goes_back() -> None:
    table = TerminalTable()
    table.partitions = 2
    assert table.complete_until() == Completeness(NOT_STARTED_MS, NOT_STARTED_MS)
    mark(table, 0, transactions=1_000, labels=2_000)
    assert table.complete_until() == Completeness(NOT_STARTED_MS, NOT_STARTED_MS)
    mark(table, 1, transactions=1_500, labels=1_800)
    assert table.complete_until() == Completeness(1_000, 1_800)
    mark(table, 0, transactions=900, labels=900)  # an older marker replayed after a restart
    assert table.complete_until() == Completeness(1_000, 1_800)
    assert table.complete_until().covers(1_000, 1_800)
    assert not table.complete_until().covers(1_001, 1_800)
