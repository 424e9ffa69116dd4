"""Detector state: what an account remembers stays bounded, ordered and survives the changelog."""

from __future__ import annotations

import struct
import sys

import pytest

from txguard.fraud.state import (
    DAY_MS,
    AccountHistory,
    DetectorState,
    StateLimits,
    StateNotRestored,
    event_id_hash,
)
from txguard.schema.v1.detector_state_pb2 import AccountHistoryState


def record(
    history: AccountHistory, event_id: str, time_ms: int, amount: int = 100, **limits: int
) -> int:
    return history.record(event_id_hash(event_id), time_ms, amount, StateLimits(**limits))


def test_events_are_capped_oldest_first() -> None:
    history = AccountHistory("acct")
    for index in range(5):
        record(history, f"e{index}", index, max_events=3)
    assert list(history.times_ms) == [2, 3, 4]
    assert not history.has_seen(event_id_hash("e0")) and not history.has_seen(event_id_hash("e1"))
    assert history.has_seen(event_id_hash("e4"))


def test_events_history_or_older_behind_the_newest_are_forgotten() -> None:
    history = AccountHistory("acct")
    for index, time_ms in enumerate([0, 500, 999, 1_000, 1_500, 2_100]):
        record(history, f"e{index}", time_ms, history_ms=1_000)
    # Newest is 2100: everything at or before 1100 can no longer be in a 1000 ms window.
    assert list(history.times_ms) == [1_500, 2_100]
    assert history.last_event_time_ms == 2_100


def test_the_default_history_keeps_thirty_days() -> None:
    history = AccountHistory("acct")
    record(history, "old", 0)
    record(history, "month", 30 * DAY_MS - 1)
    assert len(history) == 2
    record(history, "later", 30 * DAY_MS)
    assert list(history.times_ms) == [30 * DAY_MS - 1, 30 * DAY_MS]


def test_events_are_kept_in_event_time_order_ties_in_arrival_order() -> None:
    history = AccountHistory("acct")
    assert record(history, "b", 2_000, amount=2) == 0
    assert record(history, "a", 1_000, amount=1) == 0  # late: goes before
    assert record(history, "c", 2_000, amount=3) == 2  # tie: after the earlier arrival
    assert list(history.times_ms) == [1_000, 2_000, 2_000]
    assert list(history.amounts_minor) == [1, 2, 3]


def test_history_round_trips_through_the_changelog_proto() -> None:
    history = AccountHistory("acct")
    record(history, "a", 100, amount=7)
    record(history, "b", 50, amount=9)
    record(history, "c", 75, amount=-3)
    proto = AccountHistoryState.FromString(history.to_proto().SerializeToString())
    assert proto.account_id == "acct"
    # Little-endian 8-byte integers, one run per list.
    assert proto.event_times_ms_le == struct.pack("<3q", 50, 75, 100)
    assert proto.amounts_minor_le == struct.pack("<3q", 9, -3, 7)
    hashes = [event_id_hash(name) for name in "bca"]
    assert proto.event_id_hashes_le == struct.pack("<3Q", *hashes)
    assert proto.last_event_time_ms == 100
    restored = AccountHistory.from_proto(proto)
    assert list(restored.hashes) == hashes
    assert list(restored.times_ms) == [50, 75, 100]
    assert list(restored.amounts_minor) == [9, -3, 7]
    assert restored.count_in_window(100, 1_000) == 3
    assert restored.to_proto() == proto


def test_a_state_written_in_the_earlier_format_is_read_the_same() -> None:
    history = AccountHistory("acct")
    for name, time_ms, amount in [("a", 100, 7), ("b", 50, 9), ("c", 75, -3)]:
        record(history, name, time_ms, amount=amount)
    earlier = AccountHistoryState(
        account_id="acct", last_event_time_ms=100, next_offset=12, amounts_minor=[9, -3, 7]
    )
    earlier.event_id_hashes.extend(history.hashes)
    earlier.event_times_ms.extend([50, 75, 100])
    restored = AccountHistory.from_proto(
        AccountHistoryState.FromString(earlier.SerializeToString())
    )
    assert list(restored.hashes) == list(history.hashes)
    assert list(restored.times_ms) == [50, 75, 100]
    assert list(restored.amounts_minor) == [9, -3, 7]
    assert (restored.last_event_time_ms, restored.next_offset) == (100, 12)
    # Written again, it takes the current format.
    assert restored.to_proto().event_times_ms_le == struct.pack("<3q", 50, 75, 100)
    assert not restored.to_proto().event_times_ms


def _observed(state: DetectorState, partition: int, account_id: str) -> AccountHistory:
    """What `observe_batch` does with a record's account: find it, or create it empty, and mark
    it changed since the last checkpoint."""
    accounts, changed = state.accounts_and_changes()[partition]
    history = accounts.get(account_id)
    if history is None:
        history = accounts[account_id] = AccountHistory(account_id)
    changed.add(account_id)
    return history


def test_detector_state_reports_each_changed_account_once() -> None:
    state = DetectorState()
    old = AccountHistory("old")
    record(old, "x", 1)
    state.assign(0, [old.to_proto()])
    state.assign(1, [])
    restored = state.account(0, "old")
    assert restored is not None and restored.has_seen(event_id_hash("x"))
    assert state.account(1, "old") is None
    for partition, account, event_id, time_ms in [
        (0, "new", "e1", 10),
        (0, "new", "e2", 20),
        (1, "other", "e3", 30),
    ]:
        record(_observed(state, partition, account), event_id, time_ms)
    changes = state.take_changed_copies({0: 7, 1: 3})
    assert sorted((p, history.account_id) for p, history in changes) == [(0, "new"), (1, "other")]
    new_state = next(history for _, history in changes if history.account_id == "new")
    assert list(new_state.times_ms) == [10, 20]
    assert [(h.account_id, h.next_offset) for _, h in changes] == [("new", 7), ("other", 3)]
    assert state.take_changed_copies({0: 8, 1: 4}) == []


def test_dropped_partition_must_be_restored_before_use() -> None:
    state = DetectorState()
    state.assign(3, [])
    _observed(state, 3, "acct")
    state.drop(3)
    assert state.partitions == []
    with pytest.raises(StateNotRestored):
        state.account(3, "acct")


def test_memory_per_account_is_a_few_bytes_per_event() -> None:
    history = AccountHistory("acct-0001")
    empty = history.memory_bytes()
    for index in range(100):
        record(history, f"e{index}", index * 1_000)
    # Three packed 8-byte arrays: about 24 bytes per event, plus array over-allocation.
    assert 24 * 100 <= history.memory_bytes() - empty <= 40 * 100


def test_has_seen_matches_whole_hashes_only() -> None:
    history = AccountHistory("acct")
    first, second = 0x1122334455667788, 0x99AABBCCDDEEFF00
    history.append_in_order(first, 1, 100)
    history.append_in_order(second, 2, 100)
    packed = history.hashes.tobytes()
    # The last four bytes of one hash and the first four of the next, read as one hash.
    straddling = int.from_bytes(packed[4:12], sys.byteorder)
    assert not history.has_seen(straddling)
    assert not history.has_seen_any([straddling, 7])
    assert history.has_seen(first) and history.has_seen(second)
    # A straddling match before the real one does not hide it.
    history.append_in_order(straddling, 3, 100)
    assert history.has_seen(straddling) and history.has_seen_any([7, straddling])


def test_amount_bound_covers_every_remembered_amount_and_tightens_after_expiry() -> None:
    history = AccountHistory("acct")
    record(history, "big", 0, amount=1 << 40, history_ms=1_000)
    record(history, "small", 500, amount=7, history_ms=1_000)
    assert history.amount_bound_minor == 1 << 40
    record(history, "later", 1_200, amount=9, history_ms=1_000)  # "big" expires
    assert list(history.amounts_minor) == [7, 9]
    assert history.amount_bound_minor == 1 << 40  # Still a bound, no longer tight.
    assert history.largest_amount_minor() == 9
    assert history.amount_bound_minor == 9
    restored = AccountHistory.from_proto(history.to_proto())
    assert restored.amount_bound_minor == 9


def test_changed_copies_keep_the_state_they_were_taken_with() -> None:
    state = DetectorState()
    state.assign(0, [])
    state.assign(1, [])
    record(_observed(state, 0, "a"), "e1", 10)
    record(_observed(state, 1, "b"), "e2", 20)
    copies = state.take_changed_copies({})
    assert state.take_changed_copies({}) == []
    # The original goes on changing; the copy a checkpoint writes does not.
    record(_observed(state, 0, "a"), "e3", 30)
    assert [(p, h.account_id, list(h.times_ms)) for p, h in copies] == [
        (0, "a", [10]),
        (1, "b", [20]),
    ]
    assert list(_observed(state, 0, "a").times_ms) == [10, 30]
    assert copies[0][1].has_seen(event_id_hash("e1"))
    assert not copies[0][1].has_seen(event_id_hash("e3"))


def test_a_copy_reflects_the_highest_offset_its_account_was_ever_written_with() -> None:
    # A restored state written at offset 50; its new owner copies it while still below 50 (it
    # restarted from older committed offsets): the copy keeps 50, since it still reflects them.
    written = AccountHistory("acct")
    record(written, "e1", 10)
    written.next_offset = 50
    assert AccountHistory.from_proto(written.to_proto()).next_offset == 50
    state = DetectorState()
    state.assign(0, [written.to_proto()])
    _observed(state, 0, "acct")
    [(_, below)] = state.take_changed_copies({0: 20})
    assert below.next_offset == 50
    _observed(state, 0, "acct")
    [(_, above)] = state.take_changed_copies({0: 70})
    assert above.next_offset == 70
    assert AccountHistory.from_proto(above.to_proto()).next_offset == 70
    # An account restored from an older topic (recreated since) forgets its offset, and the next
    # checkpoint writes it with the new topic's.
    assert state.forget_offsets(0) == 1
    assert _observed(state, 0, "acct").next_offset == 0
    [(_, rewritten)] = state.take_changed_copies({0: 3})
    assert rewritten.next_offset == 3
    assert rewritten.to_proto("topic-id-2").transactions_topic_id == "topic-id-2"
    # An account without an offset of its own is written again too: its copies were stamped with
    # the partition's position in the old topic.
    assert state.forget_offsets(0) == 0
    assert [copy.account_id for _, copy in state.take_changed_copies({})] == ["acct"]
