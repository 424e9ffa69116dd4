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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from google.protobuf.message import DecodeError

from txguard.kafka.clients import BACKGROUND_FETCH, make_consumer
from txguard.kafka.compacted import TopicReadError, end_offsets
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


class TerminalArrays(NamedTuple):
    """A terminal's transaction times, sorted, and apart its frauds' times and when each became
    known, sorted by time: what a batch of feature computations searches."""

    times: npt.NDArray[np.int64]
    fraud_times: npt.NDArray[np.int64]
    fraud_known: npt.NDArray[np.int64]


# Changes between two reads that are applied to the sorted lists one by one (a bisect and a list
# insert or delete each, O(n)); past this many, as when the table is loaded, the lists are dropped
# and sorted once on the next read, so a bulk load costs one sort, not a quadratic run of inserts.
_INCREMENTAL_CHANGES = 64


class _TerminalEntries:
    """One terminal's transactions: id -> (event time, fraud known at or 0), and sorted views:
    every transaction's time, and apart the frauds (few) with the time each became known.

    The views are kept sorted by (time, known) as entries change; `times` is None while they are
    out of date (see _INCREMENTAL_CHANGES), and `fraud_times`/`fraud_known` are then stale too
    until the next `sorted_view()`. `arrays` is built on demand, reusing the frauds' arrays while
    no fraud changed: most changes are new transactions not known as fraud.
    """

    __slots__ = (
        "_fraud_arrays",
        "_unread_changes",
        "arrays",
        "entries",
        "fraud_known",
        "fraud_times",
        "known",
        "times",
    )

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, int]] = {}
        self.times: list[int] | None = []
        self.known: list[int] | None = []
        self.fraud_times: list[int] = []
        self.fraud_known: list[int] = []
        self.arrays: TerminalArrays | None = None
        self._fraud_arrays: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None
        self._unread_changes = 0

    def put(self, transaction_id: str, occurred_ms: int, fraud_known_ms: int) -> None:
        previous = self.entries.get(transaction_id)
        if previous == (occurred_ms, fraud_known_ms):
            return
        self.entries[transaction_id] = (occurred_ms, fraud_known_ms)
        if fraud_known_ms > 0 or (previous is not None and previous[1] > 0):
            self._fraud_arrays = None
        if self._keeps_sorted_after_change():
            if previous is not None:
                self._unsort(*previous)
            self._insort(occurred_ms, fraud_known_ms)

    def remove(self, transaction_id: str) -> None:
        previous = self.entries.pop(transaction_id, None)
        if previous is None:
            return
        if previous[1] > 0:
            self._fraud_arrays = None
        if self._keeps_sorted_after_change():
            self._unsort(*previous)

    def _keeps_sorted_after_change(self) -> bool:
        """Count one change to the entries; whether the sorted lists are to follow it."""
        self.arrays = None
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

    def sorted_arrays(self) -> TerminalArrays:
        if self.arrays is None:
            times, _ = self.sorted_view()
            if self._fraud_arrays is None:
                self._fraud_arrays = (
                    np.array(self.fraud_times, dtype=np.int64),
                    np.array(self.fraud_known, dtype=np.int64),
                )
            self.arrays = TerminalArrays(np.array(times, dtype=np.int64), *self._fraud_arrays)
        return self.arrays

    def sorted_view(self) -> tuple[list[int], list[int]]:
        if self.times is None or self.known is None:
            ordered = sorted(self.entries.values())
            self.times = [occurred for occurred, _ in ordered]
            self.known = [known for _, known in ordered]
            frauds = [(occurred, known) for occurred, known in ordered if known > 0]
            self.fraud_times = [occurred for occurred, _ in frauds]
            self.fraud_known = [known for _, known in frauds]
        self._unread_changes = 0
        return self.times, self.known


def _pair_index(firsts: list[int], seconds: list[int], first: int, second: int) -> int:
    """Where (first, second) goes in the pairs zip(firsts, seconds), sorted, before its equals."""
    lo = bisect.bisect_left(firsts, first)
    hi = bisect.bisect_right(firsts, first, lo)
    return bisect.bisect_left(seconds, second, lo, hi)


def _insert_pair(firsts: list[int], seconds: list[int], first: int, second: int) -> None:
    at = _pair_index(firsts, seconds, first, second)
    firsts.insert(at, first)
    seconds.insert(at, second)


def _delete_pair(firsts: list[int], seconds: list[int], first: int, second: int) -> None:
    at = _pair_index(firsts, seconds, first, second)
    # The pair is there: every entry's pair went in when it was put or at the last sort.
    del firsts[at]
    del seconds[at]


# A pack lays every terminal's times end to end in one sorted int64 array, terminal s shifted by
# s strides: a search for (s, t) never leaves terminal s's stretch while times stay in
# [0, PACK_MAX_TIME_MS); at most PACK_MAX_TERMINALS strides fit in an int64.
PACK_STRIDE = 1 << 44
PACK_MAX_TIME_MS = 1 << 43
PACK_MAX_TERMINALS = 1 << 18


class TerminalPack(NamedTuple):
    """Every terminal's sorted arrays at one moment, laid end to end for batch lookups.

    `arrays[s]` is what segment s holds: a terminal whose arrays are no longer those has
    changed since the pack was built, and its segment must not be used.
    """

    segments: dict[str, int]
    arrays: list[TerminalArrays]
    keys: npt.NDArray[np.int64]  # times + segment * PACK_STRIDE
    fraud_keys: npt.NDArray[np.int64]
    fraud_known: npt.NDArray[np.int64]


class TerminalTable:
    """Per-terminal entries and per-partition completeness, built from table records."""

    def __init__(self) -> None:
        self._terminals: dict[str, _TerminalEntries] = {}
        self._watermarks: dict[int, Completeness] = {}
        self.partitions: int = 0
        self._pack: TerminalPack | None = None
        # The terminals cannot be packed (too many, or a time out of range): not tried again.
        self._unpackable = False
        # Rows served without the pack since it was built (their terminals had changed).
        self._unpacked_rows = 0

    def pack(self) -> TerminalPack | None:
        """The pack of every terminal, built on first use and again once it is out of date
        (see `count_unpacked_rows`); None for an empty table, too many terminals or a time
        outside [0, PACK_MAX_TIME_MS)."""
        if self._pack is None and not self._unpackable and self._terminals:
            self._unpacked_rows = 0
            self._unpackable = len(self._terminals) > PACK_MAX_TERMINALS
            if not self._unpackable:
                self._pack = _build_pack(self._terminals)
                self._unpackable = self._pack is None
        return self._pack

    def count_unpacked_rows(self, rows: int) -> None:
        """Count rows just served without the pack because their terminals changed since it was
        built. Once they outnumber its terminals, the pack is built again on next use: its
        cost (all the table) is then spread over at least as many rows as it holds terminals."""
        self._unpacked_rows += rows
        if self._pack is not None and self._unpacked_rows >= len(self._pack.segments):
            self._pack = None

    def split_by_pack(
        self, pack: TerminalPack, terminal_ids: Iterable[str]
    ) -> tuple[dict[str, int], list[str]]:
        """Of distinct terminal ids: the pack segment of each the pack holds as it is now, and
        apart the ones the table holds that changed or were added since. Others are unknown."""
        packed: dict[str, int] = {}
        changed: list[str] = []
        terminals, segments, arrays = self._terminals, pack.segments, pack.arrays
        for terminal_id in terminal_ids:
            entries = terminals.get(terminal_id)
            if entries is None:
                continue
            segment = segments.get(terminal_id)
            if segment is not None and entries.arrays is arrays[segment]:
                packed[terminal_id] = segment
            else:
                changed.append(terminal_id)
        return packed, changed

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

    def sorted_arrays(self, terminal_id: str) -> TerminalArrays | None:
        """The terminal's entries as arrays, or None for a terminal the table does not hold."""
        entries = self._terminals.get(terminal_id)
        return None if entries is None else entries.sorted_arrays()

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
        metadata = self._consumer.list_topics(self.topic, timeout=30)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise TopicReadError(f"topic {self.topic} does not exist; run `txguard kafka topics`")
        partitions = sorted(topic.partitions)
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
        self._consumer.close()


def _build_pack(terminals: dict[str, _TerminalEntries]) -> TerminalPack | None:
    arrays = [entries.sorted_arrays() for entries in terminals.values()]
    times = np.concatenate([a.times for a in arrays])
    fraud_times = np.concatenate([a.fraud_times for a in arrays])
    if len(times) and (int(times.min()) < 0 or int(times.max()) >= PACK_MAX_TIME_MS):
        return None
    if len(fraud_times) and (
        int(fraud_times.min()) < 0 or int(fraud_times.max()) >= PACK_MAX_TIME_MS
    ):
        return None
    strides = np.arange(len(arrays), dtype=np.int64) * PACK_STRIDE
    return TerminalPack(
        segments={terminal_id: index for index, terminal_id in enumerate(terminals)},
        arrays=arrays,
        keys=times + np.repeat(strides, [len(a.times) for a in arrays]),
        fraud_keys=fraud_times + np.repeat(strides, [len(a.fraud_times) for a in arrays]),
        fraud_known=np.concatenate([a.fraud_known for a in arrays]),
    )
