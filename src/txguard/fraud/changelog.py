"""The detector-state changelog: compacted topic, key = account id, value = AccountHistoryState.

Partition N of the changelog holds the state of the accounts whose transactions are on partition N
of the transactions topic (the topics are co-partitioned), so a detector that is assigned
transactions partition N restores exactly changelog partition N.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from google.protobuf.message import DecodeError

from txguard.fraud.state import StateChange
from txguard.kafka.compacted import read_to_end
from txguard.kafka.consumer_loop import OutgoingRecord
from txguard.schema.v1.detector_state_pb2 import AccountHistoryState

log = logging.getLogger(__name__)


class ChangelogNotCopartitioned(RuntimeError):
    """The changelog does not have one partition per transactions partition."""


def changelog_record(topic: str, change: StateChange) -> OutgoingRecord:
    """The changelog record of one account, on the partition number of its transactions."""
    return OutgoingRecord(
        topic=topic,
        key=change.state.account_id.encode(),
        value=change.state.SerializeToString(),
        partition=change.partition,
    )


def check_copartitioned(
    topic: str, partition_counts: dict[str, int], *, transactions_topic: str
) -> int:
    """The transactions topic's partition count, once the changelog `topic` is known to match."""
    transactions = partition_counts.get(transactions_topic)
    changelog = partition_counts.get(topic)
    if transactions is None or changelog is None:
        raise ChangelogNotCopartitioned(
            f"topics {transactions_topic} and {topic} must both exist; run `txguard kafka topics`"
        )
    if transactions != changelog:
        raise ChangelogNotCopartitioned(
            f"{topic} has {changelog} partitions but {transactions_topic} has "
            f"{transactions}: the detector's state cannot follow its partitions"
        )
    return transactions


def restore_partitions(
    bootstrap: str,
    topic: str,
    partitions: Sequence[int],
    *,
    group_id: str,
    timeout_seconds: float = 60.0,
) -> dict[int, list[AccountHistoryState]]:
    """Every account's latest state per changelog partition (raises TopicReadError)."""
    latest: dict[int, dict[str, AccountHistoryState]] = {p: {} for p in partitions}

    def apply(partition: int, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        accounts = latest[partition]
        account_id = key.decode(errors="replace")
        if value is None:  # A tombstone: the account's state was deleted.
            accounts.pop(account_id, None)
            return
        try:
            accounts[account_id] = AccountHistoryState.FromString(value)
        except DecodeError:
            # Losing one account's state weakens its dedup and features; it must not stop the
            # detector.
            log.warning("state restore: undecodable state for an account, skipped")

    read_to_end(
        bootstrap, topic, partitions, apply, group_id=group_id, timeout_seconds=timeout_seconds
    )
    return {partition: list(accounts.values()) for partition, accounts in latest.items()}
