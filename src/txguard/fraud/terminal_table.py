"""The terminal-risk table as every detector instance sees it: a local copy of the compacted topic
txguard.terminal-risk.v1, followed live.

The table holds, per terminal, its recent transactions with the time each became known as fraud,
and per table partition how far in event time it is complete. A detector scores a transaction at
event time t from the terminal's transactions in (t - d - n days, t - d] and the labels known by
t, which is why it asks `complete_until()` before scoring (see FraudDetector).
"""

from __future__ import annotations

import bisect
import logging
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from google.protobuf.message import DecodeError

from txguard.kafka.clients import BACKGROUND_FETCH, make_consumer, partitions_of
from txguard.kafka.compacted import TopicReadError, end_offsets
from txguard.kafka.consumer_loop import close_consumer
from txguard.schema.v1.terminal_risk_pb2 import TerminalTableRecord

log = logging.getLogger(__name__)

# Event time before any watermark: nothing is known to be complete.
NOT_STARTED_MS = -(2**63)
WATERMARK_KEY_PREFIX = b"watermark/"


def entry_key(terminal_id: str, transaction_id: str) -> bytes:
    return f"{terminal_id}/{transaction_id}".encode()


def watermark_key(partition: int) -> bytes:
    return WATERMARK_KEY_PREFIX + str(partition).encode()


@dataclass(frozen=True, slots=True)
class Completeness:
    """Event times up to which the table is complete: transactions, and labels known."""

    transactions_ms: int
    labels_ms: int

    def covers(self, transactions_ms: int, labels_ms: int) -> bool:
        return self.transactions_ms >= transactions_ms and self.labels_ms >= labels_ms


# Changes between two reads that are applied to the sorted arrays one by one (a bisect and an
# insert or delete each, O(n)); past this many, as when the table is loaded, the arrays are dropped
# and sorted once on the next read, so a bulk load costs one sort, not a quadratic run of inserts.
_INCREMENTAL_CHANGES = 64


class _TerminalEntries:
    """One terminal's transactions: id -> (event time, fraud known at or 0), and sorted views:
    every transaction's time, and apart the frauds (few) with the time each became known.

    The views are kept sorted by (time, known) as entries change; `times` is None while they are
    out of date (see _INCREMENTAL_CHANGES), and `fraud_times`/`fraud_known` are then stale too
    until the next `sorted_view()`.
    """

    __slots__ = ("_unread_changes", "entries", "fraud_known", "fraud_times", "known", "times")

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, int]] = {}
        self.times: array[int] | None = array("q")
        self.known: array[int] | None = array("q")
        self.fraud_times: array[int] = array("q")
        self.fraud_known: array[int] = array("q")
        self._unread_changes = 0

    def put(self, transaction_id: str, occurred_ms: int, fraud_known_ms: int) -> None:
        previous = self.entries.get(transaction_id)
        if previous == (occurred_ms, fraud_known_ms):
            return
        self.entries[transaction_id] = (occurred_ms, fraud_known_ms)
        if self._keeps_sorted_after_change():
            if previous is not None:
                self._unsort(*previous)
            self._insort(occurred_ms, fraud_known_ms)

    def remove(self, transaction_id: str) -> None:
        previous = self.entries.pop(transaction_id, None)
        if previous is None:
            return
        if self._keeps_sorted_after_change():
            self._unsort(*previous)

    def _keeps_sorted_after_change(self) -> bool:
        """Count one change to the entries; whether the sorted arrays are to follow it."""
        if self.times is None:
            return False
        self._unread_changes += 1
        if self._unread_changes > _INCREMENTAL_CHANGES:
            self.times = self.known = None
            return False
        return True

    def _insort(self, occurred_ms: int, fraud_known_ms: int) -> None:
        assert self.times is not None and self.known is not None
        _insert_pair(self.times, self.known, occurred_ms, fraud_known_ms)
        if fraud_known_ms > 0:
            _insert_pair(self.fraud_times, self.fraud_known, occurred_ms, fraud_known_ms)

    def _unsort(self, occurred_ms: int, fraud_known_ms: int) -> None:
        assert self.times is not None and self.known is not None
        _delete_pair(self.times, self.known, occurred_ms, fraud_known_ms)
        if fraud_known_ms > 0:
            _delete_pair(self.fraud_times, self.fraud_known, occurred_ms, fraud_known_ms)

    def sorted_view(self) -> tuple[array[int], array[int]]:
        if self.times is None or self.known is None:
            ordered = sorted(self.entries.values())
            self.times = array("q", [occurred for occurred, _ in ordered])
            self.known = array("q", [known for _, known in ordered])
            frauds = [(occurred, known) for occurred, known in ordered if known > 0]
            self.fraud_times = array("q", [occurred for occurred, _ in frauds])
            self.fraud_known = array("q", [known for _, known in frauds])
        self._unread_changes = 0
        return self.times, self.known


def _pair_index(firsts: array[int], seconds: array[int], first: int, second: int) -> int:
    """Where (first, second) goes in the pairs zip(firsts, seconds), sorted, before its equals."""
    lo = bisect.bisect_left(firsts, first)
    hi = bisect.bisect_right(firsts, first, lo)
    return bisect.bisect_left(seconds, second, lo, hi)


def _insert_pair(firsts: array[int], seconds: array[int], first: int, second: int) -> None:
    at = _pair_index(firsts, seconds, first, second)
    firsts.insert(at, first)
    seconds.insert(at, second)


def _delete_pair(firsts: array[int], seconds: array[int], first: int, second: int) -> None:
    at = _pair_index(firsts, seconds, first, second)
    # The pair is there: every entry's pair went in when it was put or at the last sort.
    del firsts[at]
    del seconds[at]


class TerminalTable:
    """Per-terminal entries and per-partition completeness, built from table records."""

    def __init__(self) -> None:
        self._terminals: dict[str, _TerminalEntries] = {}
        self._watermarks: dict[int, Completeness] = {}
        self.partitions: int = 0

    def apply(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        """One record of the table topic; a tombstone (value None) deletes its entry."""
        if key is None or key.startswith(WATERMARK_KEY_PREFIX):
            if value is not None:
                self._apply_record(partition, value)
            return
        if value is None:
            terminal_id, _, transaction_id = key.decode(errors="replace").partition("/")
            entries = self._terminals.get(terminal_id)
            if entries is not None:
                entries.remove(transaction_id)
                if not entries.entries:
                    del self._terminals[terminal_id]
            return
        self._apply_record(partition, value)

    def _apply_record(self, partition: int, value: bytes) -> None:
        try:
            record = TerminalTableRecord.FromString(value)
        except DecodeError:
            log.warning("terminal table: undecodable record on partition %d, skipped", partition)
            return
        kind = record.WhichOneof("record")
        if kind == "entry":
            entry = record.entry
            entries = self._terminals.get(entry.terminal_id)
            if entries is None:
                entries = self._terminals[entry.terminal_id] = _TerminalEntries()
            entries.put(entry.transaction_id, entry.occurred_at_ms, entry.fraud_known_at_ms)
        elif kind == "watermark":
            mark = record.watermark
            previous = self._watermarks.get(mark.partition)
            self._watermarks[mark.partition] = Completeness(
                max(
                    mark.transactions_complete_until_ms,
                    previous.transactions_ms if previous else NOT_STARTED_MS,
                ),
                max(
                    mark.labels_complete_until_ms,
                    previous.labels_ms if previous else NOT_STARTED_MS,
                ),
            )

    def window(
        self, terminal_id: str, *, after_ms: int, until_ms: int, known_by_ms: int
    ) -> tuple[int, int]:
        """(transactions timed in (after, until], those of them known as fraud by known_by)."""
        entries = self._terminals.get(terminal_id)
        if entries is None:
            return 0, 0
        times, known = entries.sorted_view()
        start = bisect.bisect_right(times, after_ms)
        end = bisect.bisect_right(times, until_ms)
        frauds = sum(1 for at in known[start:end] if 0 < at <= known_by_ms)
        return end - start, frauds

    def windows(
        self, terminal_id: str, *, until_ms: int, windows_ms: Sequence[int], known_by_ms: int
    ) -> list[tuple[int, int]]:
        """`window` for several windows ending at `until_ms`, in one lookup: per window length
        n, (transactions timed in (until - n, until], those of them known as fraud by
        known_by)."""
        entries = self._terminals.get(terminal_id)
        if entries is None:
            return [(0, 0)] * len(windows_ms)
        times, _ = entries.sorted_view()
        fraud_times, fraud_known = entries.fraud_times, entries.fraud_known
        end = bisect.bisect_right(times, until_ms)
        fraud_end = bisect.bisect_right(fraud_times, until_ms)
        counts: list[tuple[int, int]] = []
        for window_ms in windows_ms:
            after_ms = until_ms - window_ms
            count = end - bisect.bisect_right(times, after_ms)
            frauds = 0
            if count and fraud_end:
                fraud_start = bisect.bisect_right(fraud_times, after_ms)
                for at in fraud_known[fraud_start:fraud_end]:
                    if at <= known_by_ms:
                        frauds += 1
            counts.append((count, frauds))
        return counts

    @property
    def terminals(self) -> dict[str, _TerminalEntries]:
        """Each terminal's entries by id, as they are (for `_per_record.terminal_columns`, which
        reads their sorted arrays as `windows` does)."""
        return self._terminals

    def complete_until(self) -> Completeness:
        """The least complete partition decides; a partition never heard from holds all back."""
        if self.partitions == 0 or len(self._watermarks) < self.partitions:
            return Completeness(NOT_STARTED_MS, NOT_STARTED_MS)
        marks = [self._watermarks.get(p) for p in range(self.partitions)]
        if any(mark is None for mark in marks):
            return Completeness(NOT_STARTED_MS, NOT_STARTED_MS)
        present = [mark for mark in marks if mark is not None]
        return Completeness(
            min(mark.transactions_ms for mark in present), min(mark.labels_ms for mark in present)
        )

    @property
    def terminal_count(self) -> int:
        return len(self._terminals)

    @property
    def entry_count(self) -> int:
        return sum(len(entries.entries) for entries in self._terminals.values())


class TerminalTableFollower:
    """Keeps a TerminalTable up to date from the table topic: all partitions, from the start."""

    def __init__(self, bootstrap: str, topic: str, *, group_id: str) -> None:
        self.topic = topic
        self.table = TerminalTable()
        # assign() only, no commits: the group id merely names the client.
        self._consumer: Consumer = make_consumer(
            bootstrap,
            group_id=group_id,
            client_id=f"{group_id}.terminal-table",
            **BACKGROUND_FETCH,
        )

    def load(self, *, timeout_seconds: float = 120.0) -> None:
        """Read the whole table as it is now, then keep following from there."""
        partitions = partitions_of(self._consumer, self.topic, timeout=30)
        if not partitions:
            raise TopicReadError(f"topic {self.topic} does not exist; run `txguard kafka topics`")
        self.table.partitions = len(partitions)
        deadline = time.monotonic() + timeout_seconds
        ends = {
            p: end_offsets(self._consumer, TopicPartition(self.topic, p), deadline)[1]
            for p in partitions
        }
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        positions = dict.fromkeys(partitions, 0)
        while any(positions[p] < ends[p] for p in partitions):
            if time.monotonic() > deadline:
                raise TopicReadError(
                    f"{self.topic} not read to its end within {timeout_seconds:.0f} s"
                )
            for partition, offset in self._poll(10_000, 0.5):
                positions[partition] = offset + 1

    def poll(self, *, max_records: int = 10_000, timeout: float = 0.0) -> int:
        """Apply what arrived since the last call; the number of records applied."""
        return len(self._poll(max_records, timeout))

    def _poll(self, max_records: int, timeout: float) -> list[tuple[int, int]]:
        applied: list[tuple[int, int]] = []
        for message in self._consumer.consume(num_messages=max_records, timeout=timeout):
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("terminal table: consumer error %s", error)
                continue
            partition = message.partition()
            offset = message.offset()
            if partition is None or offset is None:
                continue
            self.table.apply(partition, message.key(), message.value())
            applied.append((partition, offset))
        return applied

    def close(self) -> None:
        close_consumer(self._consumer, what="terminal table")
