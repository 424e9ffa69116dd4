"""The detector's copy of the terminal-risk table: windows, labels known in time, completeness."""

from __future__ import annotations

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from txguard.fraud import terminal_table
from txguard.fraud.terminal_table import (
    NOT_STARTED_MS,
    Completeness,
    TerminalTable,
    _TerminalEntries,
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


# (kind, transaction id, occurred, known): few ids, times and labels, so that re-puts of an id,
# removals of absent ids and equal (time, known) pairs are common. Reads take the ids as unused.
operations = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "remove", "read", "read"]),
        st.sampled_from([f"tx-{i}" for i in range(8)]),
        st.integers(-2, 5),
        st.sampled_from([0, 0, 1, 3, 4]),
    ),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(ops=operations, incremental_changes=st.sampled_from([0, 2, 64]))
def test_sorted_views_kept_on_put_and_remove_equal_a_fresh_sort(
    ops: list[tuple[str, str, int, int]], incremental_changes: int
) -> None:
    # A small limit on changes between reads also exercises the fall back to one sort.
    with mock.patch.object(terminal_table, "_INCREMENTAL_CHANGES", incremental_changes):
        entries = _TerminalEntries()
        model: dict[str, tuple[int, int]] = {}
        for kind, transaction_id, occurred, known in [*ops, ("read", "", 0, 0)]:
            if kind == "put":
                entries.put(transaction_id, occurred, known)
                model[transaction_id] = (occurred, known)
            elif kind == "remove":
                entries.remove(transaction_id)
                model.pop(transaction_id, None)
            else:
                assert entries.entries == model
                ordered = sorted(model.values())
                times = [t for t, _ in ordered]
                knowns = [k for _, k in ordered]
                fraud_times = [t for t, k in ordered if k > 0]
                fraud_knowns = [k for _, k in ordered if k > 0]
                view = entries.sorted_view()
                assert (view[0].tolist(), view[1].tolist()) == (times, knowns)
                frauds = (entries.fraud_times.tolist(), entries.fraud_known.tolist())
                assert frauds == (fraud_times, fraud_knowns)
