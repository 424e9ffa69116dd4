"""The detector's per-account state: the account's recent events (dedup and features).

State lives in memory per assigned partition and is made durable in the compacted changelog
txguard.detector-state.v2.<group> (key = account id, same partition number as the account's
transactions). Each account keeps its events of the last `history_ms` of its own event time, at
most `max_events`, as three packed arrays: small in memory and small on the changelog.
"""

from __future__ import annotations

import bisect
import hashlib
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from txguard.schema.v1.detector_state_pb2 import AccountHistoryState

DAY_MS = 86_400_000
# The longest feature window (30 days) decides how much history an account keeps.
DEFAULT_HISTORY_MS = 30 * DAY_MS
# Per account, at most this many events are remembered; features of an account busier than
# this over 30 days see only its latest events.
DEFAULT_MAX_EVENTS = 1_000


class StateNotRestored(RuntimeError):
    """A record arrived for a partition whose state was never restored: dedup would be unsafe."""

    def __init__(self, partition: int) -> None:
        super().__init__(f"no detector state for partition {partition}; it was not assigned")
        self.partition = partition


@dataclass(frozen=True, slots=True)
class StateLimits:
    """How much the detector remembers per account."""

    history_ms: int = DEFAULT_HISTORY_MS
    max_events: int = DEFAULT_MAX_EVENTS

    def __post_init__(self) -> None:
        if self.history_ms <= 0:
            raise ValueError("history_ms must be positive")
        if self.max_events < 1:
            raise ValueError("max_events must be at least 1")


def event_id_hash(event_id: str) -> int:
    """64 bits of the event id's digest: what the state remembers to recognise a redelivery."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def _holds_hash(packed: bytes, id_hash: int) -> bool:
    """Whether the packed array("Q") bytes hold `id_hash`: a byte search in C, a few times
    faster than `in` on the array, which makes a Python int of every element it compares."""
    needle = id_hash.to_bytes(8, sys.byteorder)
    found = packed.find(needle)
    while found > 0 and found % 8:  # A match across two elements is no match.
        found = packed.find(needle, found + 1)
    return found >= 0


def _little_endian(values: array[int]) -> bytes:
    """The array's 8-byte elements as little-endian bytes."""
    if sys.byteorder == "little":
        return values.tobytes()
    swapped = values[:]
    swapped.byteswap()
    return swapped.tobytes()


def _read_le(values: array[int], data: bytes, size: int) -> None:
    """Append the little-endian 8-byte integers in the first `size` bytes of `data` to the array."""
    head = memoryview(data)[:size]
    if sys.byteorder == "little":
        values.frombytes(head)
        return
    read = array(values.typecode)
    read.frombytes(head)
    read.byteswap()
    values.extend(read)


class AccountHistory:
    """One account's remembered events, ordered by (event time, arrival).

    An event is forgotten once it is `history_ms` or more older than the account's newest event,
    or, oldest first, when more than `max_events` are remembered.
    """

    __slots__ = (
        "account_id",
        "amount_bound_minor",
        "amounts_minor",
        "hashes",
        "last_event_time_ms",
        "next_offset",
        "times_ms",
    )

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.hashes = array("Q")
        self.times_ms = array("q")
        self.amounts_minor = array("q")
        self.last_event_time_ms = 0
        # Every event of the account below this offset of its partition is reflected here (0: no
        # such offset known): a record from below it is a redelivery, remembered or not.
        self.next_offset = 0
        # No remembered amount is larger (after expiry it may be larger than the largest left;
        # `largest_amount_minor` makes it exact again).
        self.amount_bound_minor = 0

    @classmethod
    def from_proto(cls, state: AccountHistoryState) -> AccountHistory:
        history = cls(state.account_id)
        # (Each read of a bytes field makes a new bytes object: once each.)
        hashes, times, amounts = (
            state.event_id_hashes_le,
            state.event_times_ms_le,
            state.amounts_minor_le,
        )
        if hashes or times or amounts:
            size = min(len(hashes), len(times), len(amounts)) // 8 * 8
            _read_le(history.hashes, hashes, size)
            _read_le(history.times_ms, times, size)
            _read_le(history.amounts_minor, amounts, size)
        else:  # Written in the earlier format: the lists as protobuf fields.
            count = min(
                len(state.event_id_hashes), len(state.event_times_ms), len(state.amounts_minor)
            )
            history.hashes.extend(state.event_id_hashes[:count])
            history.times_ms.extend(state.event_times_ms[:count])
            history.amounts_minor.extend(state.amounts_minor[:count])
        history.last_event_time_ms = state.last_event_time_ms
        history.next_offset = state.next_offset
        history.amount_bound_minor = max(history.amounts_minor, default=0)
        return history

    def to_proto(self, transactions_topic_id: str = "") -> AccountHistoryState:
        """The changelog's form; `transactions_topic_id` names the topic `next_offset` counts in."""
        return AccountHistoryState(
            account_id=self.account_id,
            last_event_time_ms=self.last_event_time_ms,
            next_offset=self.next_offset,
            transactions_topic_id=transactions_topic_id,
            event_id_hashes_le=_little_endian(self.hashes),
            event_times_ms_le=_little_endian(self.times_ms),
            amounts_minor_le=_little_endian(self.amounts_minor),
        )

    def copy(self) -> AccountHistory:
        """An independent copy (the arrays are copied, not shared)."""
        copied = AccountHistory(self.account_id)
        copied.hashes = self.hashes[:]
        copied.times_ms = self.times_ms[:]
        copied.amounts_minor = self.amounts_minor[:]
        copied.last_event_time_ms = self.last_event_time_ms
        copied.next_offset = self.next_offset
        copied.amount_bound_minor = self.amount_bound_minor
        return copied

    def __len__(self) -> int:
        return len(self.times_ms)

    def has_seen(self, id_hash: int) -> bool:
        return _holds_hash(self.hashes.tobytes(), id_hash)

    def has_seen_any(self, id_hashes: Iterable[int]) -> bool:
        if not self.hashes:
            return False
        packed = self.hashes.tobytes()
        for id_hash in id_hashes:
            if _holds_hash(packed, id_hash):
                return True
        return False

    def largest_amount_minor(self) -> int:
        """The largest remembered amount (0 without any); re-tightens `amount_bound_minor`."""
        self.amount_bound_minor = max(self.amounts_minor, default=0)
        return self.amount_bound_minor

    def record(
        self, id_hash: int, event_time_ms: int, amount_minor: int, limits: StateLimits
    ) -> int:
        """Remember one event, forget what fell out of the limits; the event's position.

        -1 when the event itself falls out at once (it is `history_ms` or more older than the
        account's newest, or older than its `max_events` newest): nothing changes then, and a
        redelivery of it will not be recognised.
        """
        times = self.times_ms
        # After any event with the same time: equal times keep their arrival order.
        position = bisect.bisect_right(times, event_time_ms)
        times.insert(position, event_time_ms)
        self.hashes.insert(position, id_hash)
        self.amounts_minor.insert(position, amount_minor)
        self.last_event_time_ms = max(self.last_event_time_ms, event_time_ms)
        self.amount_bound_minor = max(self.amount_bound_minor, amount_minor)
        return position - self.expire(limits)

    def append_in_order(self, id_hash: int, event_time_ms: int, amount_minor: int) -> None:
        """Remember an event no older than any remembered one, without forgetting anything yet.

        The caller appends a batch's events of this account this way and calls `expire` after
        computing their features: the result is what `record` would have left, event by event.
        """
        self.times_ms.append(event_time_ms)
        self.hashes.append(id_hash)
        self.amounts_minor.append(amount_minor)
        self.last_event_time_ms = max(self.last_event_time_ms, event_time_ms)
        self.amount_bound_minor = max(self.amount_bound_minor, amount_minor)

    def expire(self, limits: StateLimits) -> int:
        """Forget what fell out of the limits (older than `history_ms`, beyond `max_events`);
        how many events were forgotten (all of them the oldest)."""
        times = self.times_ms
        expired = bisect.bisect_right(times, self.last_event_time_ms - limits.history_ms)
        expired = max(expired, len(times) - limits.max_events)
        if expired > 0:
            del times[:expired]
            del self.hashes[:expired]
            del self.amounts_minor[:expired]
        return max(expired, 0)

    def count_in_window(self, event_time_ms: int, window_ms: int) -> int:
        """Events timed in (event_time - window, event_time]: the window ending at the event."""
        times = self.times_ms
        return bisect.bisect_right(times, event_time_ms) - bisect.bisect_right(
            times, event_time_ms - window_ms
        )

    def memory_bytes(self) -> int:
        """What this account's history occupies in memory (arrays and the object itself)."""
        return (
            object.__sizeof__(self)
            + self.hashes.__sizeof__()
            + self.times_ms.__sizeof__()
            + self.amounts_minor.__sizeof__()
            + self.account_id.__sizeof__()
        )


class PartitionState:
    """The accounts of one partition, and which of them changed since the last checkpoint."""

    __slots__ = ("accounts", "changed", "partition")

    def __init__(self, partition: int, accounts: Iterable[AccountHistory] = ()) -> None:
        self.partition = partition
        self.accounts: dict[str, AccountHistory] = {a.account_id: a for a in accounts}
        self.changed: set[str] = set()


@dataclass(frozen=True, slots=True)
class StateChange:
    """One account's latest state, to be written to its changelog partition."""

    partition: int
    state: AccountHistoryState


class DetectorState:
    """In-memory state of every partition this detector instance owns."""

    def __init__(self, limits: StateLimits | None = None) -> None:
        self.limits = limits or StateLimits()
        self._partitions: dict[int, PartitionState] = {}

    def assign(self, partition: int, restored: Iterable[AccountHistoryState]) -> None:
        """Take ownership of a partition with the state read back from its changelog."""
        self._partitions[partition] = PartitionState(
            partition, (AccountHistory.from_proto(state) for state in restored)
        )

    def drop(self, partition: int) -> None:
        """Forget a revoked or lost partition; its changelog keeps the state for the next owner."""
        self._partitions.pop(partition, None)

    @property
    def partitions(self) -> list[int]:
        return sorted(self._partitions)

    def account_total(self) -> int:
        return sum(len(part.accounts) for part in self._partitions.values())

    def account(self, partition: int, account_id: str) -> AccountHistory | None:
        return self._partition(partition).accounts.get(account_id)

    def accounts_and_changes(self) -> dict[int, tuple[dict[str, AccountHistory], set[str]]]:
        """Per owned partition, its accounts by id and the ids changed since the last checkpoint,
        as they are (not copies): `feature_batch.observe_batch` looks up, creates and marks
        changed a batch's accounts in them at once."""
        return {number: (part.accounts, part.changed) for number, part in self._partitions.items()}

    def take_changed_copies(self, positions: Mapping[int, int]) -> list[tuple[int, AccountHistory]]:
        """(partition, a copy of the history as it is now) of every account changed since the
        last call, once each: what a checkpoint writes while the originals go on changing.

        `positions` holds each partition's next offset to process: every record below it has been
        processed, so each copy reflects every event of its account below it (`next_offset`)."""
        changed: list[tuple[int, AccountHistory]] = []
        for part in self._partitions.values():
            accounts = part.accounts
            position = positions.get(part.partition, 0)
            for name in sorted(part.changed):
                copied = accounts[name].copy()
                copied.next_offset = max(copied.next_offset, position)
                changed.append((part.partition, copied))
            part.changed.clear()
        return changed

    def forget_offsets(self, partition: int) -> int:
        """Clear `next_offset` of the partition's accounts (their offsets belong to a topic that
        is no longer there) and mark every account changed, so that the next checkpoint writes
        each with offsets of the topic as it is; how many accounts had one."""
        part = self._partition(partition)
        cleared = 0
        for name, history in part.accounts.items():
            if history.next_offset:
                history.next_offset = 0
                cleared += 1
            part.changed.add(name)
        return cleared

    def memory_bytes(self) -> int:
        """Memory held by every account history (not counting the dict slots)."""
        return sum(
            h.memory_bytes() for part in self._partitions.values() for h in part.accounts.values()
        )

    def __iter__(self) -> Iterator[PartitionState]:
        return iter(self._partitions.values())

    def _partition(self, partition: int) -> PartitionState:
        try:
            return self._partitions[partition]
        except KeyError:
            raise StateNotRestored(partition) from None
