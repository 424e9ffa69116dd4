"""A checkpoint round: which account states it has still to write, which offsets it commits."""

from __future__ import annotations

from confluent_kafka import TopicPartition

from txguard.fraud.checkpoint import CheckpointRound
from txguard.fraud.state import AccountHistory

TOPIC = "txguard.transactions.v1"


def history(account_id: str, *times_ms: int) -> AccountHistory:
    result = AccountHistory(account_id)
    result.times_ms.extend(times_ms)
    return result


def written(accounts: list[tuple[int, AccountHistory]]) -> list[tuple[int, str, list[int]]]:
    return [(partition, h.account_id, list(h.times_ms)) for partition, h in accounts]


def offsets(round_: CheckpointRound) -> dict[int, int]:
    return {tp.partition: tp.offset for tp in round_.take_offsets()}


def test_accounts_are_written_in_order_a_slice_at_a_time_each_once() -> None:
    round_ = CheckpointRound(
        [(0, history("a", 1)), (1, history("b", 2)), (0, history("c", 3))],
        [TopicPartition(TOPIC, 0, 5)],
    )
    # Copied again before the round got to it: written once, where first listed, as copied last.
    round_.extend([(0, history("a", 1, 4)), (2, history("d", 5))], [])
    assert written(round_.next_accounts(2)) == [(0, "a", [1, 4]), (1, "b", [2])]
    assert round_.accounts_left == 2
    assert written(round_.next_accounts(2)) == [(0, "c", [3]), (2, "d", [5])]
    assert round_.next_accounts(2) == []
    assert not round_.empty  # the offsets are still to commit
    assert offsets(round_) == {0: 5}
    assert round_.empty


def test_later_offsets_replace_earlier_ones() -> None:
    round_ = CheckpointRound(
        [(0, history("a"))], [TopicPartition(TOPIC, 0, 5), TopicPartition(TOPIC, 1, 7)]
    )
    round_.extend([], [TopicPartition(TOPIC, 0, 9), TopicPartition(TOPIC, 2, 3)])
    assert written(round_.all_accounts()) == [(0, "a", [])]
    assert offsets(round_) == {0: 9, 1: 7, 2: 3}


def test_a_lost_partition_is_neither_committed_nor_written() -> None:
    round_ = CheckpointRound(
        [(0, history("a")), (1, history("b")), (0, history("c"))],
        [TopicPartition(TOPIC, 0, 5), TopicPartition(TOPIC, 1, 7)],
    )
    round_.drop_partitions([TopicPartition(TOPIC, 0)])
    assert written(round_.all_accounts()) == [(1, "b", [])]
    assert offsets(round_) == {1: 7}


def test_a_round_without_accounts_or_offsets_is_empty() -> None:
    assert CheckpointRound([], []).empty
    assert not CheckpointRound([(0, history("a"))], []).empty
