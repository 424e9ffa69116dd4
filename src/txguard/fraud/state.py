"""The detector's per-account state: seen event ids (dedup) and recent event times (velocity).

State lives in memory per assigned partition and is made durable in the compacted changelog topic
txguard.detector-state.v1 (key = account id, same partition number as the account's transactions).
It is keyed and bounded so that one account's state stays small whatever its traffic.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from txguard.schema.v1.detector_state_pb2 import AccountState

# Per account, at most this many events are remembered (ids for dedup, times for velocity).
DEFAULT_MAX_EVENTS = 1_000
# Event ids are remembered for at least this long of the account's own event time, so that a
# relay resend is recognised even when the velocity window is configured short.
MIN_DEDUP_HORIZON_MS = 3_600_000


class StateNotRestored(RuntimeError):
    """A record arrived for a partition whose state was never restored: dedup would be unsafe."""

    def __init__(self, partition: int) -> None:
        super().__init__(f"no detector state for partition {partition}; it was not assigned")
        self.partition = partition


@dataclass(frozen=True, slots=True)
class StateLimits:
    """How much the detector remembers per account."""

    velocity_window_ms: int
    max_events: int = DEFAULT_MAX_EVENTS
    min_dedup_horizon_ms: int = MIN_DEDUP_HORIZON_MS

    def __post_init__(self) -> None:
        if self.velocity_window_ms <= 0:
            raise ValueError("velocity_window_ms must be positive")
        if self.max_events < 1:
            raise ValueError("max_events must be at least 1")

    @property
    def horizon_ms(self) -> int:
        """Events at or before (newest event time - horizon) are forgotten."""
        return max(self.velocity_window_ms, self.min_dedup_horizon_ms)


class AccountHistory:
    """What the detector remembers about one account: its recent events, oldest first.

    An event is forgotten once it is more than the horizon older than the account's newest event,
    or when more than `max_events` are remembered. Serialized as two parallel lists in arrival
    order: `seen_event_ids[i]` happened at `recent_event_times_ms[i]`.
    """

    __slots__ = ("_events", "_ids", "_sorted_times", "account_id", "last_event_time_ms")

    def __init__(
        self,
        account_id: str,
        events: Iterable[tuple[str, int]] = (),
        *,
        last_event_time_ms: int = 0,
    ) -> None:
        self.account_id = account_id
        self._events: deque[tuple[str, int]] = deque()
        self._ids: set[str] = set()
        # Sorted ascending, so that late (out-of-order) events land in the right place.
        self._sorted_times: list[int] = []
        self.last_event_time_ms = last_event_time_ms
        for event_id, time_ms in events:
            self._remember(event_id, time_ms)

    @classmethod
    def from_proto(cls, state: AccountState) -> AccountHistory:
        times = state.recent_event_times_ms
        last = state.last_event_time_ms
        # Parallel lists; a missing time (never written so) is taken as the newest one.
        events = [
            (event_id, times[i] if i < len(times) else last)
            for i, event_id in enumerate(state.seen_event_ids)
        ]
        return cls(state.account_id, events, last_event_time_ms=last)

    def to_proto(self) -> AccountState:
        state = AccountState(account_id=self.account_id, last_event_time_ms=self.last_event_time_ms)
        if self._events:
            event_ids, times_ms = zip(*self._events, strict=True)
            state.seen_event_ids.extend(event_ids)
            state.recent_event_times_ms.extend(times_ms)
        return state

    @property
    def seen_event_ids(self) -> list[str]:
        return [event_id for event_id, _ in self._events]

    @property
    def recent_event_times_ms(self) -> list[int]:
        """Remembered event times, ascending."""
        return list(self._sorted_times)

    def has_seen(self, event_id: str) -> bool:
        return event_id in self._ids

    def record(self, event_id: str, event_time_ms: int, limits: StateLimits) -> None:
        """Remember one event, then forget what fell out of the bounds."""
        if event_id in self._ids:
            return
        self._remember(event_id, event_time_ms)
        self.last_event_time_ms = max(self.last_event_time_ms, event_time_ms)
        cutoff = self.last_event_time_ms - limits.horizon_ms
        events = self._events
        # Oldest arrival first; a late event stays until it reaches the front (bounded anyway).
        while events and (len(events) > limits.max_events or events[0][1] <= cutoff):
            old_id, old_time = events.popleft()
            self._ids.discard(old_id)
            del self._sorted_times[bisect.bisect_left(self._sorted_times, old_time)]

    def count_in_window(self, event_time_ms: int, window_ms: int) -> int:
        """Events timed in (event_time - window, event_time]: the window ending at the event."""
        times = self._sorted_times
        return bisect.bisect_right(times, event_time_ms) - bisect.bisect_right(
            times, event_time_ms - window_ms
        )

    def _remember(self, event_id: str, time_ms: int) -> None:
        if event_id in self._ids:
            return
        self._events.append((event_id, time_ms))
        self._ids.add(event_id)
        bisect.insort(self._sorted_times, time_ms)


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
    state: AccountState


class DetectorState:
    """In-memory state of every partition this detector instance owns."""

    def __init__(self, limits: StateLimits) -> None:
        self.limits = limits
        self._partitions: dict[int, PartitionState] = {}

    def assign(self, partition: int, restored: Iterable[AccountState]) -> None:
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

    def account_count(self, partition: int) -> int:
        return len(self._partition(partition).accounts)

    def account(self, partition: int, account_id: str) -> AccountHistory | None:
        return self._partition(partition).accounts.get(account_id)

    def is_duplicate(self, partition: int, account_id: str, event_id: str) -> bool:
        history = self._partition(partition).accounts.get(account_id)
        return history is not None and history.has_seen(event_id)

    def record(
        self, partition: int, account_id: str, event_id: str, event_time_ms: int
    ) -> AccountHistory:
        """Remember the event in its account's history and mark the account changed."""
        part = self._partition(partition)
        history = part.accounts.get(account_id)
        if history is None:
            history = part.accounts[account_id] = AccountHistory(account_id)
        history.record(event_id, event_time_ms, self.limits)
        part.changed.add(account_id)
        return history

    def take_changes(self) -> list[StateChange]:
        """The latest state of every account changed since the last call (one per account)."""
        changes: list[StateChange] = []
        for part in self._partitions.values():
            for account_id in sorted(part.changed):
                changes.append(StateChange(part.partition, part.accounts[account_id].to_proto()))
            part.changed.clear()
        return changes

    def __iter__(self) -> Iterator[PartitionState]:
        return iter(self._partitions.values())

    def _partition(self, partition: int) -> PartitionState:
        try:
            return self._partitions[partition]
        except KeyError:
            raise StateNotRestored(partition) from None
