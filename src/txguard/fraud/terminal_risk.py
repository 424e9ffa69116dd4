"""The terminal-risk aggregator (`txguard serve terminal-risk`): per-terminal state, re-keyed.

Transactions and labels are keyed by account; terminal features need them by terminal. Two
stages, each a consumer group of its own, so both scale by adding instances:

1. `TerminalEventRekeyer` reads txguard.transactions.v1 and txguard.fraud-labels.v1 and writes
   each record to txguard.terminal-events.v1 keyed by terminal id. After each batch it sends, to
   every partition of that topic, a watermark per source partition: "everything of source
   partition p up to event time T is before this marker".
2. `TerminalTableBuilder` reads txguard.terminal-events.v1, merges transactions with their labels
   and publishes the compacted table txguard.terminal-risk.v1: partition N holds the entries of
   terminal-events partition N, then that partition's watermark (the least advanced source). The
   table is also this stage's changelog: a new owner of partition N restores from it.

Detectors read the whole table and score a transaction at event time t only once it is complete
for transactions up to t - 7 days and for labels known by t (see terminal_table.py), so features
do not depend on how fast anything ran.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import cast

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from google.protobuf.message import DecodeError

from txguard.config import Settings, TopicNames
from txguard.fraud.terminal_table import NOT_STARTED_MS, entry_key, watermark_key
from txguard.kafka.clients import BACKGROUND_FETCH, partitions_of
from txguard.kafka.compacted import read_to_end
from txguard.kafka.consumer_loop import (
    CommitReporter,
    OutgoingRecord,
    Subscription,
    batch_processed,
    close_consumer,
    commit_offsets,
    next_offsets,
    poll_batch,
    subscribe,
    wait_for_kafka,
)
from txguard.kafka.group_watch import (
    STALL_SECONDS,
    GroupWatch,
    replace_stalled_consumer,
    retire_consumer,
    watched_consumer,
)
from txguard.kafka.publisher import ConfirmedPublisher, PublishError, PublishTimeout
from txguard.kafka.serde import (
    InvalidEvent,
    ReceivedHeaders,
    decode_fraud_label,
    decode_stream_watermark,
    decode_transaction_created,
    is_stream_watermark,
)
from txguard.kafka.topic_identity import (
    CHECK_SECONDS,
    TopicIdentity,
    TopicRecreated,
)
from txguard.kafka.topics import TopicError
from txguard.observability import metrics
from txguard.schema.v1.terminal_risk_pb2 import (
    SourceWatermark,
    TerminalEvent,
    TerminalRiskEntry,
    TerminalTableRecord,
    TerminalTableWatermark,
    TerminalTransaction,
)

log = logging.getLogger(__name__)

CONSUME_TIMEOUT_SECONDS = 0.05
# After a batch's first record, how long a stage waits for more: every batch sends watermarks to
# every partition, one produce request each, so a stage batches over time. The stages are off the
# payment path (the detector reads the table seven days of event time behind and never waits for
# it live), so the broker's time goes to the transactions instead.
BATCH_LINGER_SECONDS = 0.25
DAY_MS = 86_400_000
# Entries older than TXGUARD_TERMINAL_TABLE_RETENTION_DAYS (default 60) behind the table's
# watermark are deleted (tombstoned): features reach back 37 days (7-day delay + 30-day window);
# the rest is slack for detectors running behind. A detector further behind than that (a replay
# whose table was built first) needs the retention `unbounded`.
PRUNE_EVERY_MS = DAY_MS // 24


@dataclass
class AggregatorStats:
    consumed: int = 0
    skipped: int = 0  # undecodable or invalid records, and transactions without a terminal
    forwarded: int = 0
    entries_published: int = 0
    entries_deleted: int = 0
    batches: int = 0
    retries: int = 0
    consumers_replaced: int = 0  # consumers replaced after the group membership stalled
    topic_recreations: int = 0  # input topics found deleted and created again


def _partition_count(consumer: Consumer, topic: str) -> int:
    count = len(partitions_of(consumer, topic, timeout=30))
    if not count:
        raise TopicError(f"topic {topic} does not exist; run `txguard kafka topics`")
    return count


def _check_table_partitions(topics: TopicNames, events: int | None, table: int | None) -> None:
    """Partition N of the table holds partition N of the terminal events: the counts match."""
    if events is not None and table is not None and events != table:
        raise TopicError(
            f"{topics.terminal_risk} has {table} partitions but {topics.terminal_events} has "
            f"{events}: they must match; see 'Changing a partition count' in docs/operations.md"
        )


class _Stage:
    """One consume -> transform -> publish -> commit loop with its own consumer group.

    Per batch: the output is published and every record acknowledged before the input's offsets
    are committed, so a crash repeats a batch (its output is idempotent) but never skips one.
    """

    name: str  # the group suffix and the service log's name for the stage
    output_topic: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.stats = AggregatorStats()
        self.metrics = metrics.ConsumerMetrics("terminal-risk")
        self.group = f"{settings.terminal_risk_group}.{self.name}"
        self.bootstrap = ""
        self.group_stall_seconds = STALL_SECONDS
        self.topic_check_seconds = CHECK_SECONDS
        self._group_watch = GroupWatch(stall_seconds=self.group_stall_seconds)
        self._what = f"terminal-risk {self.name}"
        # Follows the input topics' ids while running (`run`).
        self._identity: TopicIdentity | None = None

    def run(self, stop: threading.Event) -> None:
        bootstrap = wait_for_kafka(self.settings, stop, what=self._what)
        if bootstrap is None:
            return
        self.bootstrap = bootstrap
        consumer = self._new_consumer(bootstrap)
        publisher = ConfirmedPublisher(bootstrap, client_id=self.group, on_retry=self._retry)
        identity = TopicIdentity(
            bootstrap,
            self.input_topics,
            counted=self.counted_topics,
            check_seconds=self.topic_check_seconds,
        )
        self._identity = identity
        try:
            identity.learn()
            subscription = self.subscribe(consumer)
            # A run of failing reports counts from the subscription, after the metadata reads.
            self._group_watch.restart()
            while not stop.is_set():
                if self._group_watch.stalled() and replace_stalled_consumer(
                    self._group_watch, bootstrap, what=self._what, group=self.group
                ):
                    self._retire(consumer, subscription)
                    consumer = self._new_consumer(bootstrap)
                    subscription = self.subscribe(consumer)
                for recreated in identity.check():
                    self._read_recreated_topic(consumer, identity, recreated)
                self.follow_partition_counts(identity, publisher)
                records = poll_batch(
                    consumer,
                    self.settings.consume_batch_size,
                    CONSUME_TIMEOUT_SECONDS,
                    metrics=self.metrics,
                    linger=BATCH_LINGER_SECONDS,
                    subscription=subscription,
                )
                if not records:
                    continue
                output = self.transform(records)
                publisher.publish(output, stop, what=self._what)
                self.metrics.produced[self.output_topic].inc(len(output))
                commit_offsets(
                    consumer, next_offsets(records), on_retry=self._retry, identity=identity
                )
                self.stats.batches += 1
                batch_processed(consumer, self.metrics)
        except (PublishTimeout, PublishError) as exc:
            if not stop.is_set():
                raise
            log.error("stopping without committing the last batch (%s)", exc)
        finally:
            close_consumer(consumer, what=self._what)
            self._identity = None
            identity.close()
            publisher.close()
            log.info("terminal-risk %s stopped: %s", self.name, asdict(self.stats))

    def _new_consumer(self, bootstrap: str) -> Consumer:
        """A consumer of the stage's group, watched by a new `GroupWatch`."""
        consumer, self._group_watch = watched_consumer(
            bootstrap,
            group_id=self.group,
            client_id=self.group,
            stall_seconds=self.group_stall_seconds,
            on_commit=CommitReporter(self._retry),
            **BACKGROUND_FETCH,
        )
        return consumer

    def _retire(self, consumer: Consumer, subscription: Subscription) -> None:
        """Give up a consumer whose group membership stalled; its partitions are handled as
        lost (`forget_partitions`), before a new consumer subscribes."""
        self.stats.consumers_replaced += 1
        self.forget_partitions()
        retire_consumer(consumer, subscription, self.metrics, what=self._what)

    def _read_recreated_topic(
        self, consumer: Consumer, identity: TopicIdentity, recreated: TopicRecreated
    ) -> None:
        """An input topic was deleted and created again while the stage read it: each of its
        partitions held is read from its start. The output is idempotent: an entry merged twice
        is the same entry, a watermark only advances."""
        identity.read_from_start(consumer, recreated, what=self._what)
        if not recreated.again:
            self.stats.topic_recreations += 1

    def forget_partitions(self) -> None:
        """Drop what the stage holds of its partitions (a stage with state overrides this)."""

    def follow_partition_counts(
        self, identity: TopicIdentity, publisher: ConfirmedPublisher
    ) -> None:
        """Take the partition counts of the latest answer about the topics the stage's work
        depends on (`counted_topics`): partitions added to a topic reach the stage's clients
        only at their next metadata refresh."""

    @property
    def input_topics(self) -> list[str]:
        raise NotImplementedError

    @property
    def counted_topics(self) -> list[str]:
        """Topics whose partition counts the stage follows besides its input's."""
        return []

    def subscribe(self, consumer: Consumer) -> Subscription:
        raise NotImplementedError

    def transform(self, records: Sequence[Message]) -> list[OutgoingRecord]:
        raise NotImplementedError

    def _retry(self) -> None:
        self.stats.retries += 1
        self.metrics.retries["produce_or_commit"].inc()


class TerminalEventRekeyer(_Stage):
    """Stage 1: transactions and labels, re-keyed by terminal, with source watermarks."""

    name = "rekey"

    def __init__(self, settings: Settings) -> None:
        self.output_topic = settings.topics.terminal_events
        super().__init__(settings)
        # Highest event time forwarded per (source topic, partition) and the last one announced.
        self._seen: dict[tuple[str, int], int] = {}
        self._announced: dict[tuple[str, int], int] = {}
        self._targets = 0
        self._targets_asked_at = float("-inf")

    @property
    def input_topics(self) -> list[str]:
        return [self.topics.transactions, self.topics.labels]

    @property
    def counted_topics(self) -> list[str]:
        return [self.topics.terminal_events]

    def follow_partition_counts(
        self, identity: TopicIdentity, publisher: ConfirmedPublisher
    ) -> None:
        """Watermarks go to every partition of the terminal events, added ones too, once the
        stage's producer knows them."""
        events = self.topics.terminal_events
        if identity.partitions(events) in (None, self._targets):
            return
        # The producer is asked at most once per topic check while it knows fewer.
        now = time.monotonic()
        if now - self._targets_asked_at < self.topic_check_seconds:
            return
        self._targets_asked_at = now
        try:
            targets = publisher.partition_count(events)
        except KafkaException as exc:
            log.debug("partitions of %s not known to the producer yet: %s", events, exc)
            return
        if targets <= self._targets:
            return
        log.warning(
            "terminal-risk rekey: %s has %d partitions now (%d before); watermarks go to all",
            events,
            targets,
            self._targets,
        )
        self._targets = targets
        # Announced again, so that the added partitions hear of every source's progress.
        self._announced.clear()

    def subscribe(self, consumer: Consumer) -> Subscription:
        if not self._targets:
            # Only at the first subscription: later, added partitions are taken only once the
            # producer knows them (`follow_partition_counts`), whatever a new consumer sees.
            self._targets = _partition_count(consumer, self.topics.terminal_events)
        return subscribe(
            consumer,
            self.input_topics,
            metrics=self.metrics,
            identity=self._identity,
            what=self._what,
        )

    def transform(self, records: Sequence[Message]) -> list[OutgoingRecord]:
        return self.rekey(records, self._targets)

    def rekey(self, records: Sequence[Message], targets: int) -> list[OutgoingRecord]:
        """The batch's records keyed by terminal, then the advanced watermarks to every target."""
        topic_out = self.topics.terminal_events
        output: list[OutgoingRecord] = []
        for message in records:
            self.stats.consumed += 1
            source = (cast(str, message.topic()), cast(int, message.partition()))
            forwarded = self._forward(message, source)
            if forwarded is not None:
                terminal_id, event = forwarded
                output.append(
                    OutgoingRecord(topic_out, terminal_id.encode(), event.SerializeToString())
                )
                self.stats.forwarded += 1
        for source, time_ms in self._seen.items():
            if time_ms > self._announced.get(source, NOT_STARTED_MS):
                self._announced[source] = time_ms
                marker = TerminalEvent(
                    watermark=SourceWatermark(
                        source_topic=source[0], source_partition=source[1], event_time_ms=time_ms
                    )
                ).SerializeToString()
                output.extend(
                    OutgoingRecord(topic_out, b"", marker, partition=target)
                    for target in range(targets)
                )
        return output

    def _forward(
        self, message: Message, source: tuple[str, int]
    ) -> tuple[str, TerminalEvent] | None:
        headers = cast(ReceivedHeaders, message.headers())
        try:
            if is_stream_watermark(headers):
                mark = decode_stream_watermark(message.value(), headers)
                self._advance(source, int(mark.complete_until.ToMilliseconds()))
                return None
            if source[0] == self.topics.labels:
                label = decode_fraud_label(message.value(), headers)
                # Label sources publish in known_at order per partition (docs/terminal-risk.md).
                self._advance(source, int(label.known_at.ToMilliseconds()))
                return label.terminal_id, TerminalEvent(label=label)
            tx = decode_transaction_created(message.value(), headers).transaction
        except InvalidEvent as exc:
            # The detector dead-letters poison transactions; here they only have to be passed.
            self.stats.skipped += 1
            self.metrics.skipped[exc.kind].inc()
            log.warning("terminal-risk: skipping %s[%s]: %s", *source, exc)
            return None
        time_ms = int(tx.occurred_at.ToMilliseconds())
        self._advance(source, time_ms)
        if not tx.terminal_id:
            self.stats.skipped += 1
            return None
        return tx.terminal_id, TerminalEvent(
            transaction=TerminalTransaction(
                transaction_id=tx.transaction_id,
                terminal_id=tx.terminal_id,
                occurred_at_ms=time_ms,
            )
        )

    def _advance(self, source: tuple[str, int], time_ms: int) -> None:
        if time_ms > self._seen.get(source, NOT_STARTED_MS):
            self._seen[source] = time_ms


class _PartitionTable:
    """Stage 2's state for one terminal-events partition: its entries and source watermarks."""

    def __init__(self) -> None:
        self.entries: dict[bytes, TerminalRiskEntry] = {}
        self.sources: dict[tuple[str, int], int] = {}
        self.published = TerminalTableWatermark(
            transactions_complete_until_ms=NOT_STARTED_MS, labels_complete_until_ms=NOT_STARTED_MS
        )
        self.changed: set[bytes] = set()
        # Entries older than this were deleted; the next sweep is due once the horizon passed
        # it by PRUNE_EVERY_MS.
        self.pruned_until_ms = NOT_STARTED_MS
        # (event time, key) of every entry written, oldest first: a sweep pops what expired
        # instead of reading every entry. A pair whose entry has since changed time is stale.
        self.by_time: list[tuple[int, bytes]] = []

    def put(self, key: bytes, entry: TerminalRiskEntry) -> None:
        previous = self.entries.get(key)
        self.entries[key] = entry
        if previous is None or previous.occurred_at_ms != entry.occurred_at_ms:
            heapq.heappush(self.by_time, (entry.occurred_at_ms, key))

    def expire(self, horizon_ms: int) -> list[bytes]:
        """Delete the entries timed before `horizon_ms`; their keys, oldest first."""
        expired: list[bytes] = []
        by_time = self.by_time
        while by_time and by_time[0][0] < horizon_ms:
            occurred_ms, key = heapq.heappop(by_time)
            entry = self.entries.get(key)
            if entry is not None and entry.occurred_at_ms == occurred_ms:
                del self.entries[key]
                expired.append(key)
        return expired


class TerminalTableBuilder(_Stage):
    """Stage 2: the compacted terminal-risk table, partition by partition."""

    name = "table"

    def __init__(self, settings: Settings) -> None:
        self.output_topic = settings.topics.terminal_risk
        super().__init__(settings)
        self._tables: dict[int, _PartitionTable] = {}
        self._source_partitions: dict[str, int] = {}

    @property
    def input_topics(self) -> list[str]:
        return [self.topics.terminal_events]

    @property
    def counted_topics(self) -> list[str]:
        return [self.topics.transactions, self.topics.labels, self.topics.terminal_risk]

    def follow_partition_counts(
        self, identity: TopicIdentity, publisher: ConfirmedPublisher
    ) -> None:
        """A source's table watermark is its least advanced partition, added ones included
        (nothing until they report); the table must keep the terminal events' partition count."""
        for topic in (self.topics.transactions, self.topics.labels):
            count = identity.partitions(topic)
            if count is not None and count != self._source_partitions.get(topic):
                log.warning(
                    "terminal-risk table: %s has %d partitions now (%s before); its watermark "
                    "waits for every one",
                    topic,
                    count,
                    self._source_partitions.get(topic),
                )
                self._source_partitions[topic] = count
        _check_table_partitions(
            self.topics,
            identity.partitions(self.topics.terminal_events),
            identity.partitions(self.topics.terminal_risk),
        )

    def subscribe(self, consumer: Consumer) -> Subscription:
        for topic in (self.topics.transactions, self.topics.labels):
            self._source_partitions[topic] = _partition_count(consumer, topic)
        _check_table_partitions(
            self.topics,
            _partition_count(consumer, self.topics.terminal_events),
            _partition_count(consumer, self.topics.terminal_risk),
        )
        return subscribe(
            consumer,
            self.input_topics,
            metrics=self.metrics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
            identity=self._identity,
            what=self._what,
        )

    def transform(self, records: Sequence[Message]) -> list[OutgoingRecord]:
        return self.apply(records)

    def apply(self, records: Sequence[Message]) -> list[OutgoingRecord]:
        """Merge the batch into the partitions' state; the table records it changes."""
        for message in records:
            self.stats.consumed += 1
            partition = cast(int, message.partition())
            table = self._tables.get(partition)
            if table is None:
                # Not a partition this stage owns: poll_batch keeps none in a batch, so this
                # only guards the table state against one.
                continue
            try:
                event = TerminalEvent.FromString(message.value() or b"")
            except DecodeError:
                self.stats.skipped += 1
                self.metrics.skipped["undecodable"].inc()
                log.warning("terminal-risk: undecodable terminal event on partition %d", partition)
                continue
            self._merge(table, event)
        output: list[OutgoingRecord] = []
        for partition, table in self._tables.items():
            output.extend(self._emit(partition, table))
        return output

    def _merge(self, table: _PartitionTable, event: TerminalEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "transaction":
            tx = event.transaction
            key = entry_key(tx.terminal_id, tx.transaction_id)
            entry = table.entries.get(key)
            if entry is None or entry.occurred_at_ms != tx.occurred_at_ms:
                table.put(
                    key,
                    TerminalRiskEntry(
                        terminal_id=tx.terminal_id,
                        transaction_id=tx.transaction_id,
                        occurred_at_ms=tx.occurred_at_ms,
                        fraud_known_at_ms=entry.fraud_known_at_ms if entry else 0,
                    ),
                )
                table.changed.add(key)
        elif kind == "label":
            label = event.label
            key = entry_key(label.terminal_id, label.transaction_id)
            known = int(label.known_at.ToMilliseconds()) if label.fraud else 0
            entry = table.entries.get(key)
            if entry is None or entry.fraud_known_at_ms != known:
                table.put(
                    key,
                    TerminalRiskEntry(
                        terminal_id=label.terminal_id,
                        transaction_id=label.transaction_id,
                        occurred_at_ms=(
                            entry.occurred_at_ms
                            if entry
                            else int(label.occurred_at.ToMilliseconds())
                        ),
                        fraud_known_at_ms=known,
                    ),
                )
                table.changed.add(key)
        elif kind == "watermark":
            mark = event.watermark
            source = (mark.source_topic, mark.source_partition)
            table.sources[source] = max(
                table.sources.get(source, NOT_STARTED_MS), mark.event_time_ms
            )

    def _emit(self, partition: int, table: _PartitionTable) -> list[OutgoingRecord]:
        """Changed entries, then (if it advanced) the watermark with expired entries deleted."""
        topic = self.topics.terminal_risk
        output = [
            OutgoingRecord(
                topic,
                key,
                TerminalTableRecord(entry=table.entries[key]).SerializeToString(),
                partition=partition,
            )
            for key in sorted(table.changed)
        ]
        self.stats.entries_published += len(output)
        table.changed.clear()
        transactions_ms = self._complete_until(table, self.topics.transactions)
        labels_ms = self._complete_until(table, self.topics.labels)
        published = table.published
        if (
            transactions_ms <= published.transactions_complete_until_ms
            and labels_ms <= published.labels_complete_until_ms
        ):
            return output
        transactions_ms = max(transactions_ms, published.transactions_complete_until_ms)
        labels_ms = max(labels_ms, published.labels_complete_until_ms)
        retention_days = self.settings.terminal_table_retention_days
        if retention_days is not None:
            horizon = transactions_ms - retention_days * DAY_MS
            if horizon - table.pruned_until_ms >= PRUNE_EVERY_MS:
                table.pruned_until_ms = horizon
                expired = table.expire(horizon)
                for key in expired:
                    output.append(OutgoingRecord(topic, key, None, partition=partition))
                self.stats.entries_deleted += len(expired)
        table.published = TerminalTableWatermark(
            partition=partition,
            transactions_complete_until_ms=transactions_ms,
            labels_complete_until_ms=labels_ms,
        )
        output.append(
            OutgoingRecord(
                topic,
                watermark_key(partition),
                TerminalTableRecord(watermark=table.published).SerializeToString(),
                partition=partition,
            )
        )
        return output

    def _complete_until(self, table: _PartitionTable, topic: str) -> int:
        """The least advanced partition of a source; nothing while one has not reported."""
        marks = [table.sources.get((topic, p)) for p in range(self._source_partitions[topic])]
        if any(mark is None for mark in marks):
            return NOT_STARTED_MS
        return min(cast(list[int], marks))

    # -- rebalancing ----------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [p.partition for p in partitions]
        restored = {n: _PartitionTable() for n in numbers}

        def load(partition: int, key: bytes | None, value: bytes | None) -> None:
            table = restored[partition]
            if key is None:
                return
            if value is None:
                table.entries.pop(key, None)
                return
            try:
                record = TerminalTableRecord.FromString(value)
            except DecodeError:
                return
            if record.WhichOneof("record") == "entry":
                table.put(key, record.entry)
            elif record.WhichOneof("record") == "watermark":
                table.published = record.watermark

        read_to_end(
            self.bootstrap,
            self.topics.terminal_risk,
            numbers,
            load,
            group_id=self.group,
        )
        self._tables.update(restored)
        log.info(
            "terminal-risk table: assigned %s, restored %d entries",
            numbers,
            sum(len(t.entries) for t in restored.values()),
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for partition in partitions:
            self._tables.pop(partition.partition, None)

    def forget_partitions(self) -> None:
        self._tables.clear()


class TerminalRiskAggregator:
    """Both stages in one process, one thread each; stop one and both stop."""

    def __init__(self, settings: Settings) -> None:
        self.rekeyer = TerminalEventRekeyer(settings)
        self.builder = TerminalTableBuilder(settings)

    def run(self, stop: threading.Event) -> None:
        failure: list[BaseException] = []

        def stage(target: TerminalEventRekeyer | TerminalTableBuilder) -> None:
            try:
                target.run(stop)
            except BaseException as exc:
                failure.append(exc)
                stop.set()

        threads = [
            threading.Thread(target=stage, args=(s,), name=type(s).__name__, daemon=True)
            for s in (self.rekeyer, self.builder)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failure:
            raise failure[0]
