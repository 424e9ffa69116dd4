"""A detector checkpoint written over several loop iterations, a slice of accounts at a time.

A round begins once everything sent so far is acknowledged. It takes what is to be made durable
at that moment: the offsets processed so far and a copy of every account changed so far. Each
following iteration writes the next slice of those copies to the changelog, and once all of them
are acknowledged the round's offsets are committed. Writing every changed account at once
(thousands a second under load) held the decisions of the batches behind it; spread out, the
loop goes on deciding while the round is written.

The order guarantees what a checkpoint in one piece did:
- the copies are taken when every decision sent so far is acknowledged, so the changelog never
  says "seen" for an event whose decision was lost;
- the offsets are committed only once the state of every account changed before the round began
  is acknowledged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from itertools import islice

from confluent_kafka import TopicPartition

from txguard.fraud.state import AccountHistory
from txguard.kafka.consumer_loop import UncommittedOffsets

# Accounts one iteration writes at least (about 2 ms of encoding and producing at 2 KiB each);
# at least as many as the iteration's batch had records, so that a round keeps up at full speed.
CHECKPOINT_STEP_ACCOUNTS = 64

_Copies = Iterable[tuple[int, AccountHistory]]


class CheckpointRound:
    """The offsets a round commits and the account states it has still to write."""

    def __init__(self, copies: _Copies, offsets: Iterable[TopicPartition]) -> None:
        # (partition, account id) -> the account's state when the round took it.
        self._copies: dict[tuple[int, str], AccountHistory] = {}
        self._offsets = UncommittedOffsets()
        self.extend(copies, offsets)
        # When the round last sent state, or began (monotonic seconds).
        self.written_at = time.monotonic()

    @property
    def empty(self) -> bool:
        """Nothing to write and nothing to commit."""
        return not self._copies and not self._offsets

    @property
    def accounts_left(self) -> int:
        return len(self._copies)

    def extend(self, copies: _Copies, offsets: Iterable[TopicPartition]) -> None:
        """Take on later copies and offsets: they replace those of the same account or partition."""
        for partition, history in copies:
            self._copies[(partition, history.account_id)] = history
        self._offsets.add(offsets)

    def next_accounts(self, limit: int) -> list[tuple[int, AccountHistory]]:
        """Up to `limit` account states to write next, forgotten here."""
        keys = list(islice(self._copies, limit))
        return [(key[0], self._copies.pop(key)) for key in keys]

    def all_accounts(self) -> list[tuple[int, AccountHistory]]:
        """Every account state still to write, forgotten here."""
        return self.next_accounts(len(self._copies))

    def take_offsets(self) -> list[TopicPartition]:
        """The offsets to commit once every account state is written and acknowledged."""
        return self._offsets.take()

    def drop_partitions(self, partitions: Iterable[TopicPartition]) -> None:
        """Lost partitions: this member must neither commit their offsets nor write their state."""
        partitions = list(partitions)
        self._offsets.take_partitions(partitions)
        lost = {partition.partition for partition in partitions}
        self._copies = {key: copy for key, copy in self._copies.items() if key[0] not in lost}
