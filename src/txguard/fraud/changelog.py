"""The detector-state changelog: compacted topic, key = account id, value = AccountState.

Partition N of the changelog holds the state of the accounts whose transactions are on partition N
of the transactions topic (the topics are co-partitioned), so a detector that is assigned
transactions partition N restores exactly changelog partition N.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from google.protobuf.message import DecodeError

from txguard.config import TRANSACTIONS_TOPIC
from txguard.fraud.state import StateChange
from txguard.kafka.clients import make_consumer
from txguard.kafka.consumer_loop import OutgoingRecord
from txguard.schema.v1.detector_state_pb2 import AccountState

log = logging.getLogger(__name__)


class StateRestoreError(RuntimeError):
    """A changelog partition could not be read to its end in time."""


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


def check_copartitioned(topic: str, partition_counts: dict[str, int]) -> int:
    """The transactions topic's partition count, once the changelog `topic` is known to match."""
    transactions = partition_counts.get(TRANSACTIONS_TOPIC)
    changelog = partition_counts.get(topic)
    if transactions is None or changelog is None:
        raise ChangelogNotCopartitioned(
            f"topics {TRANSACTIONS_TOPIC} and {topic} must both exist; run `txguard kafka topics`"
        )
    if transactions != changelog:
        raise ChangelogNotCopartitioned(
            f"{topic} has {changelog} partitions but {TRANSACTIONS_TOPIC} has "
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
) -> dict[int, list[AccountState]]:
    """Read changelog partitions from the beginning to their high watermark; last state wins.

    Uses its own consumer with assign() (no group membership, no commits): the group id only
    names it. Returns every account's latest state per partition.
    """
    latest: dict[int, dict[str, AccountState]] = {p: {} for p in partitions}
    if not partitions:
        return {}
    overrides: dict[str, Any] = {"enable.partition.eof": True}
    consumer = make_consumer(
        bootstrap, group_id=group_id, client_id=f"{group_id}.state-restore", **overrides
    )
    deadline = time.monotonic() + timeout_seconds
    try:
        ends: dict[int, int] = {}
        for partition in partitions:
            low, high = _watermarks(consumer, TopicPartition(topic, partition), deadline)
            if high > low:
                ends[partition] = high
        if ends:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        while ends:
            if time.monotonic() > deadline:
                raise StateRestoreError(
                    f"changelog partitions {sorted(ends)} not read to their end within "
                    f"{timeout_seconds:.0f} s"
                )
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                source = message.partition()
                if source is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        ends.pop(source, None)
                        continue
                    if error.fatal():
                        raise KafkaException(error)
                    log.warning("state restore: consumer error %s", error)
                    continue
                _apply(latest[source], message.key(), message.value())
                offset = message.offset()
                if offset is not None and offset + 1 >= ends.get(source, 0):
                    ends.pop(source, None)
    finally:
        consumer.close()
    return {partition: list(accounts.values()) for partition, accounts in latest.items()}


# A partition moments old, or one whose leader is moving, answers these until it settles.
_SETTLING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._TIMED_OUT,
    }
)


def _watermarks(consumer: Consumer, partition: TopicPartition, deadline: float) -> tuple[int, int]:
    """Low and high watermark, retried while the partition settles (e.g. just created)."""
    while True:
        wait = max(0.1, min(10.0, deadline - time.monotonic()))
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=wait)
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            settling = isinstance(error, KafkaError) and (
                error.retriable() or error.code() in _SETTLING
            )
            if not settling or time.monotonic() >= deadline:
                raise StateRestoreError(
                    f"cannot read the end of {partition.topic}[{partition.partition}]: {exc}"
                ) from exc
            time.sleep(0.1)


def _apply(accounts: dict[str, AccountState], key: bytes | None, value: bytes | None) -> None:
    if key is None:
        return
    account_id = key.decode(errors="replace")
    if value is None:  # A tombstone: the account's state was deleted.
        accounts.pop(account_id, None)
        return
    try:
        accounts[account_id] = AccountState.FromString(value)
    except DecodeError:
        # Losing one account's state weakens its dedup and velocity; it must not stop the detector.
        log.warning("state restore: undecodable state for an account, skipped")
