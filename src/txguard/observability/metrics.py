"""The metric catalogue: every txguard metric is declared here, once, with a one-line description.

Code never invents a metric name inline: it imports an object from this module (or one of the
small helpers below, which cache the labelled children a hot path needs). Naming follows the
Prometheus conventions: `txguard_` prefix, base units in the name (`_seconds`), `_total` for
counters, `_info` for info metrics. Label values are fixed vocabularies (service names, reasons,
outcomes, topics, partitions, broker addresses): never an account, a card or a client identifier.

`service` names the component, not the process: the outbox relay reports as `relay` also when it
runs inside `txguard serve transactions`. Prometheus adds `job` and `instance` to tell processes
apart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.metrics import MetricWrapperBase

# `*_created` series double the series count and no txguard query reads them.
disable_created_metrics()

ServiceName: TypeAlias = Literal["transactions", "relay", "detector", "applier", "terminal-risk"]
SERVICES: Final[tuple[ServiceName, ...]] = (
    "transactions",
    "relay",
    "detector",
    "applier",
    "terminal-risk",
)

# Bucket boundaries, chosen for each measured range.
API_LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# 0.2 s is a boundary: the end-to-end p99 alert threshold is read off it exactly.
END_TO_END_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# Steps of 0.05: the default review (0.5) and decline (0.8) thresholds are boundaries.
SCORE_BUCKETS: Final = tuple(round(0.05 * step, 2) for step in range(1, 21))
BATCH_DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS: Final = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000)
RESTORE_DURATION_BUCKETS: Final = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)

# -- every service ---------------------------------------------------------------------------

SERVICE_INFO: Final = Info(
    "txguard_service", "Which txguard service this process runs, and its version", ["service"]
)

# -- transaction API -------------------------------------------------------------------------

TRANSACTIONS_ACCEPTED: Final = Counter(
    "txguard_transactions_accepted_total", "New transactions stored with their outbox event"
)
TRANSACTIONS_REPLAYED: Final = Counter(
    "txguard_transactions_replayed_total",
    "Idempotent retries answered with the stored response (nothing new stored)",
)
TRANSACTIONS_REJECTED: Final = Counter(
    "txguard_transactions_rejected_total", "Create requests refused, by reason", ["reason"]
)
TRANSACTION_FIELD_VIOLATIONS: Final = Counter(
    "txguard_transaction_field_violations_total",
    "Invalid fields in rejected create requests, by request field name",
    ["field"],
)
API_REQUEST_DURATION: Final = Histogram(
    "txguard_api_request_duration_seconds",
    "Server-side time to answer one API request "
    "(one item of a SubmitTransactions stream or of a batch)",
    ["method", "code"],
    buckets=API_LATENCY_BUCKETS,
)
STORE_COMMIT_DURATION: Final = Histogram(
    "txguard_store_commit_duration_seconds",
    "Time to write one group commit of transactions, outbox events and idempotency records",
    buckets=API_LATENCY_BUCKETS,
)
STORE_COMMIT_BATCH_RECORDS: Final = Histogram(
    "txguard_store_commit_batch_records",
    "Transactions written per group commit",
    buckets=BATCH_SIZE_BUCKETS,
)
STORE_COMMIT_FAILURES: Final = Counter(
    "txguard_store_commit_failures_total",
    "Group commits that failed (every request in them answered UNAVAILABLE)",
)
STORE_WRITE_QUEUE: Final = Gauge(
    "txguard_store_write_queue_records", "Requests waiting for the transaction writer"
)

# -- outbox relay ----------------------------------------------------------------------------

OUTBOX_BACKLOG: Final = Gauge(
    "txguard_outbox_backlog_events", "Outbox events stored but not yet acknowledged by Kafka"
)
OUTBOX_OLDEST_AGE: Final = Gauge(
    "txguard_outbox_oldest_unpublished_age_seconds",
    "Age of the oldest outbox event not yet acknowledged by Kafka (0 when none)",
)
OUTBOX_PUBLISHED: Final = Counter(
    "txguard_outbox_records_published_total",
    "Outbox events acknowledged by Kafka and marked published, by topic",
    ["topic"],
)
OUTBOX_DELIVERY_FAILURES: Final = Counter(
    "txguard_outbox_delivery_failures_total",
    "Outbox events whose delivery failed (they stay unpublished and are resent)",
)
OUTBOX_PRUNED: Final = Counter(
    "txguard_outbox_pruned_total", "Published outbox events deleted after the retention period"
)

# -- every consumer (label `service`) ----------------------------------------------------------

CONSUMER_RECORDS_CONSUMED: Final = Counter(
    "txguard_consumer_records_consumed_total",
    "Records received from Kafka, by topic",
    ["service", "topic"],
)
CONSUMER_RECORDS_PROCESSED: Final = Counter(
    "txguard_consumer_records_processed_total",
    "Records fully processed and handed to the offset commit, by topic",
    ["service", "topic"],
)
CONSUMER_BATCH_DURATION: Final = Histogram(
    "txguard_consumer_batch_duration_seconds",
    "Time from receiving a batch to committing its offsets",
    ["service"],
    buckets=BATCH_DURATION_BUCKETS,
)
CONSUMER_BATCH_RECORDS: Final = Histogram(
    "txguard_consumer_batch_records",
    "Records per consumed batch",
    ["service"],
    buckets=BATCH_SIZE_BUCKETS,
)
CONSUMER_LAST_POLL: Final = Gauge(
    "txguard_consumer_last_poll_timestamp_seconds",
    "Unix time of the consumer loop's last poll (a stalled loop stops moving it)",
    ["service"],
)
CONSUMER_LAG_RECORDS: Final = Gauge(
    "txguard_consumer_lag_records",
    "Records of an assigned partition not yet processed (high watermark - position)",
    ["service", "topic", "partition"],
)
CONSUMER_LAG_SECONDS: Final = Gauge(
    "txguard_consumer_lag_seconds",
    "Age of the oldest record of an assigned partition not yet processed (0 when caught up)",
    ["service", "topic", "partition"],
)
CONSUMER_ASSIGNED_PARTITIONS: Final = Gauge(
    "txguard_consumer_assigned_partitions", "Partitions currently assigned", ["service"]
)
CONSUMER_REBALANCES: Final = Counter(
    "txguard_consumer_rebalances_total",
    "Rebalance callbacks that changed the assignment, by kind (assigned, revoked, lost)",
    ["service", "kind"],
)
RETRIES: Final = Counter(
    "txguard_retries_total",
    "Transient failures retried (full producer queue, failed delivery, commit, locked store)",
    ["service", "reason"],
)
DEAD_LETTER_RECORDS: Final = Counter(
    "txguard_dead_letter_records_total",
    "Records sent to the dead-letter topic, by error kind",
    ["service", "reason"],
)
SKIPPED_RECORDS: Final = Counter(
    "txguard_consumer_records_skipped_total",
    "Records skipped without a dead-letter topic (logged), by error kind",
    ["service", "reason"],
)
DUPLICATES_DROPPED: Final = Counter(
    "txguard_duplicates_dropped_total",
    "Records recognised as already handled (redelivery or replay) and dropped",
    ["service"],
)
RECORDS_PRODUCED: Final = Counter(
    "txguard_records_produced_total",
    "Records acknowledged by Kafka, by topic",
    ["service", "topic"],
)
STATE_RESTORE_DURATION: Final = Histogram(
    "txguard_state_restore_duration_seconds",
    "Time to restore the state of newly assigned partitions from their changelog",
    ["service"],
    buckets=RESTORE_DURATION_BUCKETS,
)

# -- fraud detection ---------------------------------------------------------------------------

DECISIONS: Final = Counter(
    "txguard_decisions_total", "Fraud decisions produced, by outcome", ["outcome"]
)
FRAUD_SCORE: Final = Histogram(
    "txguard_fraud_score", "Fraud score (probability 0..1) of each decision", buckets=SCORE_BUCKETS
)
RULE_HITS: Final = Counter("txguard_rule_hits_total", "Rules that fired, by rule code", ["rule"])
# Exported from the first `DecisionMetrics.set_model` on: a process that scores nothing has no
# model line (an Info exports one, without labels, from its creation).
MODEL_INFO: Final = Info(
    "txguard_model", "The scoring model in use (version and kind)", registry=None
)
_model_info_exported = threading.Lock()
TERMINAL_TABLE_LAG: Final = Gauge(
    "txguard_terminal_table_watermark_lag_seconds",
    "How far the terminal-risk table read by this service trails its input, in event time",
    ["service"],
)
END_TO_END_LATENCY: Final = Histogram(
    "txguard_end_to_end_latency_seconds",
    "Time from a transaction's acceptance to a pipeline stage (published, decided, applied)",
    ["stage"],
    buckets=END_TO_END_BUCKETS,
)

# -- decision applier --------------------------------------------------------------------------

APPLIER_DECISIONS: Final = Counter(
    "txguard_applier_decisions_total",
    "Decisions handled by the applier, by result (applied, duplicate, unknown)",
    ["result"],
)

# -- Kafka client health (librdkafka statistics) -----------------------------------------------

KAFKA_BROKER_CONNECTED: Final = Gauge(
    "txguard_kafka_broker_connected",
    "1 when the client's connection to the broker is up, 0 while it is down or reconnecting",
    ["client", "client_type", "broker"],
)
KAFKA_BROKER_RTT_AVG: Final = Gauge(
    "txguard_kafka_broker_rtt_avg_seconds",
    "Average request round-trip time to the broker over the last statistics interval",
    ["client", "client_type", "broker"],
)
KAFKA_BROKER_RTT_P99: Final = Gauge(
    "txguard_kafka_broker_rtt_p99_seconds",
    "99th percentile request round-trip time to the broker over the last statistics interval",
    ["client", "client_type", "broker"],
)
KAFKA_PRODUCER_QUEUE: Final = Gauge(
    "txguard_kafka_producer_queue_messages",
    "Messages in the producer's local queue awaiting delivery",
    ["client"],
)

CATALOGUE: Final[tuple[MetricWrapperBase, ...]] = (
    SERVICE_INFO,
    TRANSACTIONS_ACCEPTED,
    TRANSACTIONS_REPLAYED,
    TRANSACTIONS_REJECTED,
    TRANSACTION_FIELD_VIOLATIONS,
    API_REQUEST_DURATION,
    STORE_COMMIT_DURATION,
    STORE_COMMIT_BATCH_RECORDS,
    STORE_COMMIT_FAILURES,
    STORE_WRITE_QUEUE,
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_AGE,
    OUTBOX_PUBLISHED,
    OUTBOX_DELIVERY_FAILURES,
    OUTBOX_PRUNED,
    CONSUMER_RECORDS_CONSUMED,
    CONSUMER_RECORDS_PROCESSED,
    CONSUMER_BATCH_DURATION,
    CONSUMER_BATCH_RECORDS,
    CONSUMER_LAST_POLL,
    CONSUMER_LAG_RECORDS,
    CONSUMER_LAG_SECONDS,
    CONSUMER_ASSIGNED_PARTITIONS,
    CONSUMER_REBALANCES,
    RETRIES,
    DEAD_LETTER_RECORDS,
    SKIPPED_RECORDS,
    DUPLICATES_DROPPED,
    RECORDS_PRODUCED,
    STATE_RESTORE_DURATION,
    DECISIONS,
    FRAUD_SCORE,
    RULE_HITS,
    MODEL_INFO,
    TERMINAL_TABLE_LAG,
    END_TO_END_LATENCY,
    APPLIER_DECISIONS,
    KAFKA_BROKER_CONNECTED,
    KAFKA_BROKER_RTT_AVG,
    KAFKA_BROKER_RTT_P99,
    KAFKA_PRODUCER_QUEUE,
)

# -- label vocabularies --------------------------------------------------------------------------

REJECTION_REASONS: Final = (
    "invalid_argument",
    "request_in_flight",
    "idempotency_key_reused",
    "store_unavailable",
    "client_id_missing",
    "batch_too_large",
)
# Error kinds of `txguard.kafka.serde.InvalidEvent`.
INVALID_RECORD_KINDS: Final = ("missing-schema", "wrong-schema", "undecodable", "invalid")
OUTCOMES: Final = ("approve", "review", "decline")
END_TO_END_STAGES: Final = ("published", "decided", "applied")
REBALANCE_KINDS: Final = ("assigned", "revoked", "lost")
# What each consumer retries (`txguard_retries_total{reason}`); exposed at 0 from the start.
CONSUMER_RETRY_REASONS: Final[Mapping[ServiceName, tuple[str, ...]]] = {
    "detector": ("produce", "commit", "consumer_replaced"),
    "applier": ("store_locked", "commit", "consumer_replaced"),
    "terminal-risk": ("produce_or_commit", "consumer_replaced"),
}

TopicPartitionKey: TypeAlias = tuple[str, int]
M = TypeVar("M", bound=MetricWrapperBase)


# -- helpers: cached children for hot paths --------------------------------------------------


# Below this many values, observe_many() observes them one by one (measured: 1 value 6 us
# against 51, 4 values 20 against 26, 8 values 43 against 22).
OBSERVE_EACH_BELOW = 6


def observe_many(histogram: Histogram, values: Sequence[float] | npt.NDArray[np.float64]) -> None:
    """`histogram.observe(v)` for every value, in one update per bucket instead of one per value.

    Counts each value into the first bucket whose upper bound is >= it, exactly as `observe`
    does (prometheus_client keeps per-bucket counts and accumulates them when collected).
    """
    amounts = np.asarray(values, dtype=np.float64)
    if len(amounts) < OBSERVE_EACH_BELOW:
        # A few values: one observe() each costs less than the numpy calls.
        for amount in amounts.tolist():
            histogram.observe(amount)
        return
    histogram._raise_if_not_observable()
    bounds = np.asarray(histogram._upper_bounds, dtype=np.float64)
    counts = np.bincount(np.searchsorted(bounds, amounts, side="left"), minlength=len(bounds))
    histogram._sum.inc(sum(amounts.tolist()))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=False):
        if count:
            bucket.inc(count)


class Children(Generic[M]):
    """Children of one labelled metric by the value of one label, created once and then reused.

    `.labels()` takes a lock and validates on every call; a dict lookup does neither.
    """

    def __init__(self, metric: M, label: str, fixed: Mapping[str, str] | None = None) -> None:
        self._metric = metric
        self._label = label
        self._fixed = dict(fixed or {})
        self._children: dict[str, M] = {}

    def __getitem__(self, value: str) -> M:
        child = self._children.get(value)
        if child is None:
            child = self._metric.labels(**self._fixed, **{self._label: value})
            self._children[value] = child
        return child

    def precreate(self, values: Iterable[str]) -> None:
        """Expose 0 for the known values at once, so that `increase()` sees the first event."""
        for value in values:
            self[value]


@dataclass(frozen=True, slots=True)
class PartitionSpan:
    """What one consumed batch held of one partition; timestamps in seconds since the epoch."""

    topic: str
    partition: int
    first_offset: int
    first_timestamp: float | None
    last_offset: int
    last_timestamp: float | None
    records: int


class _PartitionLag:
    __slots__ = ("high_watermark", "oldest_unprocessed", "pending", "position", "records_gauge")

    def __init__(self, records_gauge: Gauge) -> None:
        self.records_gauge = records_gauge
        self.high_watermark: int | None = None
        self.position: int | None = None
        # Timestamp of the oldest record not yet processed; None when caught up.
        self.oldest_unprocessed: float | None = None
        # True between receiving a batch of this partition and finishing it.
        self.pending = False


class ConsumerLagTracker:
    """Lag of each assigned partition of one consumer, in records and in seconds.

    - records: high watermark - position (next offset to process), never negative;
    - seconds: now - timestamp of the oldest record not yet processed, 0 when caught up.

    While a batch is in hand the oldest unprocessed record is its first record of the partition.
    After it, the next record is unseen; its age is bounded by that of the last processed record,
    which stands in until the next batch (or a caught-up position) says better. The seconds gauge
    is computed at scrape time, so a stalled loop shows a growing age instead of a frozen one.
    """

    def __init__(self, service: str, *, clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self._clock = clock
        self._partitions: dict[TopicPartitionKey, _PartitionLag] = {}

    def partitions(self) -> list[TopicPartitionKey]:
        return list(self._partitions)

    def lag_records(self, topic: str, partition: int) -> int:
        state = self._partitions.get((topic, partition))
        if state is None or state.high_watermark is None or state.position is None:
            return 0
        return max(0, state.high_watermark - state.position)

    def lag_seconds(self, topic: str, partition: int) -> float:
        state = self._partitions.get((topic, partition))
        if state is None or state.oldest_unprocessed is None:
            return 0.0
        return max(0.0, self._clock() - state.oldest_unprocessed)

    def received(self, spans: Iterable[PartitionSpan]) -> None:
        """A batch arrived: its first record per partition is the oldest not yet processed."""
        for span in spans:
            state = self._state(span.topic, span.partition)
            if not state.pending:
                state.pending = True
                state.oldest_unprocessed = (
                    span.first_timestamp if span.first_timestamp is not None else self._clock()
                )
                state.position = span.first_offset
                self._publish_records(state)

    def processed(self, spans: Iterable[PartitionSpan]) -> None:
        """The batch is done: the position moves past it; its last record stands in for the next."""
        for span in spans:
            state = self._state(span.topic, span.partition)
            state.pending = False
            state.position = span.last_offset + 1
            if state.high_watermark is not None and state.position >= state.high_watermark:
                state.oldest_unprocessed = None
            else:
                state.oldest_unprocessed = (
                    span.last_timestamp if span.last_timestamp is not None else self._clock()
                )
            self._publish_records(state)

    def positions(
        self, watermarks: Mapping[TopicPartitionKey, tuple[int | None, int | None]]
    ) -> None:
        """The client's (position, high watermark) of every assigned partition.

        Partitions missing from `watermarks` are no longer assigned: their series are removed.
        A position at the high watermark is caught up, also when it moved past records no batch
        showed (transaction markers). Unknown values (None or negative) are ignored.
        """
        for key in [key for key in self._partitions if key not in watermarks]:
            self.forget(*key)
        for (topic, partition), (position, high_watermark) in watermarks.items():
            state = self._state(topic, partition)
            if high_watermark is not None and high_watermark >= 0:
                state.high_watermark = high_watermark
            if state.pending:
                continue  # the batch in hand defines the position until it is processed
            if position is not None and position >= 0:
                state.position = position
            if self.lag_records(topic, partition) == 0:
                if state.position is not None and state.high_watermark is not None:
                    state.oldest_unprocessed = None
            elif state.oldest_unprocessed is None:
                # Records no batch has shown yet: their age is unknown, so it counts from now.
                state.oldest_unprocessed = self._clock()
            self._publish_records(state)

    def forget(self, topic: str, partition: int) -> None:
        """The partition was revoked or lost: its lag is its next owner's to report."""
        if self._partitions.pop((topic, partition), None) is not None:
            labels = (self.service, topic, str(partition))
            CONSUMER_LAG_RECORDS.remove(*labels)
            CONSUMER_LAG_SECONDS.remove(*labels)

    def forget_all(self) -> None:
        for key in list(self._partitions):
            self.forget(*key)

    def _state(self, topic: str, partition: int) -> _PartitionLag:
        key = (topic, partition)
        state = self._partitions.get(key)
        if state is None:
            labels = (self.service, topic, str(partition))
            state = _PartitionLag(CONSUMER_LAG_RECORDS.labels(*labels))
            CONSUMER_LAG_SECONDS.labels(*labels).set_function(
                lambda: self.lag_seconds(topic, partition)
            )
            self._partitions[key] = state
        return state

    def _publish_records(self, state: _PartitionLag) -> None:
        if state.high_watermark is not None and state.position is not None:
            state.records_gauge.set(max(0, state.high_watermark - state.position))


class ConsumerMetrics:
    """The consumer metrics of one service's consumer loop, with their children cached.

    Typical loop: `poll_batch(..., metrics=m)` (received) -> process -> commit ->
    `batch_processed(consumer, m)`; `subscribe(..., metrics=m)` counts rebalances.
    """

    def __init__(self, service: ServiceName, *, clock: Callable[[], float] = time.time) -> None:
        self.service: ServiceName = service
        self._clock = clock
        fixed = {"service": service}
        self.lag = ConsumerLagTracker(service, clock=clock)
        self._consumed = Children(CONSUMER_RECORDS_CONSUMED, "topic", fixed)
        self._processed = Children(CONSUMER_RECORDS_PROCESSED, "topic", fixed)
        self._batch_duration = CONSUMER_BATCH_DURATION.labels(service)
        self._batch_records = CONSUMER_BATCH_RECORDS.labels(service)
        self._last_poll = CONSUMER_LAST_POLL.labels(service)
        self._assigned = CONSUMER_ASSIGNED_PARTITIONS.labels(service)
        self._rebalances = Children(CONSUMER_REBALANCES, "kind", fixed)
        self._rebalances.precreate(REBALANCE_KINDS)
        self.retries = Children(RETRIES, "reason", fixed)
        # A counter born at 1 hides its first increment from rate() and increase().
        self.retries.precreate(CONSUMER_RETRY_REASONS.get(service, ()))
        self.dead_lettered = Children(DEAD_LETTER_RECORDS, "reason", fixed)
        self.dead_lettered.precreate(INVALID_RECORD_KINDS)
        self.skipped = Children(SKIPPED_RECORDS, "reason", fixed)
        self.skipped.precreate(INVALID_RECORD_KINDS)
        self._duplicates = DUPLICATES_DROPPED.labels(service)
        self.produced = Children(RECORDS_PRODUCED, "topic", fixed)
        self._batch: list[PartitionSpan] = []
        self._batch_started = 0.0
        # Monotonic time after which the consumer's positions are read again (rate limit).
        self.next_lag_refresh = 0.0

    def polled(self) -> None:
        self._last_poll.set(self._clock())

    def batch_received(self, spans: list[PartitionSpan]) -> None:
        """Records arrived; they stay the pending batch until `batch_processed()`."""
        if not self._batch:
            self._batch_started = time.perf_counter()
        self._batch.extend(spans)
        total = 0
        for span in spans:
            self._consumed[span.topic].inc(span.records)
            total += span.records
        self._batch_records.observe(total)
        self.lag.received(spans)

    def batch_processed(self) -> None:
        """Every record received since the last call is processed and handed to the commit."""
        spans, self._batch = self._batch, []
        if not spans:
            return
        self._batch_duration.observe(time.perf_counter() - self._batch_started)
        for span in spans:
            self._processed[span.topic].inc(span.records)
        self.lag.processed(spans)

    def duplicates_dropped(self, count: int = 1) -> None:
        if count:
            self._duplicates.inc(count)

    def rebalanced(
        self, kind: Literal["assigned", "revoked", "lost"], partitions: Iterable[TopicPartitionKey]
    ) -> None:
        changed = list(partitions)
        if not changed:
            return
        self._rebalances[kind].inc()
        if kind != "assigned":
            for topic, partition in changed:
                self.lag.forget(topic, partition)

    def assignment_size(self, partitions: int) -> None:
        self._assigned.set(partitions)


class DecisionMetrics:
    """What a decision-producing service records per batch: outcomes, scores, rules, latency."""

    def __init__(self) -> None:
        self.outcomes = Children(DECISIONS, "outcome")
        self.outcomes.precreate(OUTCOMES)
        self.rule_hits = Children(RULE_HITS, "rule")
        self.decided_latency = END_TO_END_LATENCY.labels("decided")

    @staticmethod
    def set_model(version: str, kind: str) -> None:
        MODEL_INFO.info({"version": version, "kind": kind})
        if _model_info_exported.acquire(blocking=False):  # held for good once exported
            REGISTRY.register(MODEL_INFO)

    @staticmethod
    def observe_scores(scores: Sequence[float]) -> None:
        observe_many(FRAUD_SCORE, scores)
