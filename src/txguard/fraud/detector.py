"""The fraud detector: consumes transactions, decides each one once, publishes the decisions.

Per batch: decode -> dedup -> state/features -> score -> decide -> emit -> commit (see
`FraudDetector.process_batch` and `FraudDetector.emit_and_commit`). Delivery is at-least-once;
the per-account state (seen event ids) restored from the changelog turns reprocessed events into
duplicates, across restarts and rebalances alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from txguard.clock import now_us
from txguard.config import DECISIONS_TOPIC, TRANSACTIONS_TOPIC, Settings
from txguard.fraud.changelog import changelog_record, check_copartitioned, restore_partitions
from txguard.fraud.dead_letter import DeadLetter, dead_letter_for
from txguard.fraud.decisions import DecisionThresholds, build_decision
from txguard.fraud.features import ScoringInput, event_time_ms, transaction_features
from txguard.fraud.scoring import RuleScorer, Scorer
from txguard.fraud.state import DetectorState, StateChange, StateLimits
from txguard.kafka.clients import make_consumer, make_producer
from txguard.kafka.consumer_loop import (
    Backoff,
    CommitReporter,
    DeliveryTimeout,
    FailedDeliveries,
    OutgoingRecord,
    close_producer,
    commit_offsets,
    next_offsets,
    poll_batch,
    produce_with_backpressure,
    wait_for_deliveries,
    wait_for_kafka,
)
from txguard.kafka.serde import InvalidEvent, decode_transaction_created, encode_decision
from txguard.kafka.topics import ensure_topics
from txguard.schema.v1.decision_pb2 import FraudDecision
from txguard.schema.v1.events_pb2 import TransactionCreated

log = logging.getLogger(__name__)

# consume() waits this long for a full batch: under light load it bounds the added latency,
# under load the batch fills first.
CONSUME_TIMEOUT_SECONDS = 0.02
# On stop, how long to wait for the last batch's records to be acknowledged.
STOP_GRACE_SECONDS = 10.0
STATS_LOG_INTERVAL_SECONDS = 30.0
RESTORE_TIMEOUT_SECONDS = 120.0


class DecisionPublishTimeout(RuntimeError):
    """Stopping, and the batch's records were not acknowledged in time: offsets stay uncommitted."""


class DecisionPublishError(RuntimeError):
    """A record of the batch was rejected while stopping; the batch will be reprocessed."""


@dataclass
class DetectorStats:
    """Running counters since start; logged periodically (metrics come later)."""

    processed: int = 0  # records consumed, whatever became of them
    decided: int = 0  # decisions published
    duplicates_dropped: int = 0  # events whose id the account's state had already seen
    dead_lettered: int = 0  # records sent to the DLQ topic
    retries: int = 0  # transient failures retried (full queue, failed delivery, commit)
    batches: int = 0  # batches committed
    restored_accounts: int = 0  # account states read back from the changelog on assignment


@dataclass
class BatchOutput:
    """What one batch produces, and the offsets to commit once all of it is acknowledged."""

    decisions: list[FraudDecision] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    state_changes: list[StateChange] = field(default_factory=list)
    offsets: list[TopicPartition] = field(default_factory=list)


class FraudDetector:
    """One detector instance; run several in the same group to scale out (one per partition max)."""

    def __init__(self, settings: Settings, *, scorer: Scorer | None = None) -> None:
        self.settings = settings
        self.scorer: Scorer = scorer or RuleScorer.from_settings(settings)
        self.thresholds = DecisionThresholds.from_settings(settings)
        self.window_ms = settings.velocity_window_seconds * 1000
        self.state = DetectorState(StateLimits(velocity_window_ms=self.window_ms))
        self.stats = DetectorStats()
        self._bootstrap = ""
        self._producer: Producer | None = None
        self._stats_logged_at = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; then finish the batch, flush, commit, close, return."""
        bootstrap = wait_for_kafka(self.settings, stop, what="fraud detector")
        if bootstrap is None:
            return
        self._bootstrap = bootstrap
        consumer = make_consumer(
            bootstrap,
            group_id=self.settings.detector_group,
            client_id="txguard-detector",
            on_commit=CommitReporter(self._count_retry),
        )
        try:
            # The group's own changelog is created on first start of a new group.
            ensure_topics(bootstrap, self.settings)
            check_copartitioned(
                self.settings.detector_state_topic,
                {
                    name: len(topic.partitions)
                    for name, topic in consumer.list_topics(timeout=30).topics.items()
                },
            )
            self._producer = self._new_producer()
            consumer.subscribe(
                [TRANSACTIONS_TOPIC],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            while not stop.is_set():
                records = poll_batch(
                    consumer, self.settings.consume_batch_size, CONSUME_TIMEOUT_SECONDS
                )
                if records:
                    self.emit_and_commit(consumer, self.process_batch(records), stop)
                self._log_stats_periodically()
        except (DecisionPublishTimeout, DecisionPublishError) as exc:
            if not stop.is_set():
                raise
            # Safe: the batch's offsets were not committed, so its next owner reprocesses it.
            log.error("stopping without committing the last batch (%s)", exc)
        finally:
            # Closing leaves the group; the revoke callback drops the partitions' state, which is
            # already in the changelog because every batch was flushed before its commit.
            consumer.close()
            if self._producer is not None:
                close_producer(self._producer, timeout=STOP_GRACE_SECONDS)
                self._producer = None
            log.info("fraud detector stopped: %s", asdict(self.stats))

    # -- the pipeline, one step per method ---------------------------------------------------

    def process_batch(self, records: Sequence[Message]) -> BatchOutput:
        """decode -> dedup -> state/features -> score -> decide, in offset order per partition."""
        output = BatchOutput(offsets=next_offsets(records))
        inputs: list[ScoringInput] = []
        for message in records:
            self.stats.processed += 1
            event = self._decode(message, output)
            if event is None:
                continue
            item = self._observe(cast(int, message.partition()), event)
            if item is not None:
                inputs.append(item)
        decided_at_us = now_us()
        results = self.scorer.score_batch(inputs)
        output.decisions = [
            build_decision(
                item.event,
                result,
                thresholds=self.thresholds,
                model_version=self.scorer.model_version,
                rules_version=self.scorer.rules_version,
                decided_at_us=decided_at_us,
            )
            for item, result in zip(inputs, results, strict=True)
        ]
        # One record per changed account: its state after the whole batch (last state wins).
        output.state_changes = self.state.take_changes()
        return output

    def _decode(self, message: Message, output: BatchOutput) -> TransactionCreated | None:
        """The event, or None when the record is poison and was set aside for the DLQ."""
        headers = cast(Sequence[tuple[str, bytes | None]] | None, message.headers())
        try:
            return decode_transaction_created(message.value(), headers)
        except InvalidEvent as exc:
            output.dead_letters.append(dead_letter_for(message, exc))
            self.stats.dead_lettered += 1
            log.warning(
                "dead-lettering %s[%s]@%s: %s",
                message.topic(),
                message.partition(),
                message.offset(),
                exc,
            )
            return None

    def _observe(self, partition: int, event: TransactionCreated) -> ScoringInput | None:
        """Dedup, then record the event in its account's state and compute its features.

        None for a duplicate: the event id is already in the account's state.
        """
        account_id = event.transaction.account_id
        if self.state.is_duplicate(partition, account_id, event.event_id):
            self.stats.duplicates_dropped += 1
            return None
        occurred_ms = event_time_ms(event)
        history = self.state.record(partition, account_id, event.event_id, occurred_ms)
        in_window = history.count_in_window(occurred_ms, self.window_ms)
        return ScoringInput(event, occurred_ms, transaction_features(event, in_window))

    def emit_and_commit(
        self, consumer: Consumer, output: BatchOutput, stop: threading.Event
    ) -> None:
        """Publish what the batch produced, then commit its offsets. The order is the guarantee:

        1. decisions and dead letters -> flush -> every delivery report checked;
        2. the changed accounts' state -> changelog -> flush -> every delivery report checked;
        3. only then commit the batch's offsets (asynchronously: a synchronous commit can hang
           while the coordinator is unreachable).

        Decisions go before state so that the changelog never says "seen" for an event whose
        decision was lost. A crash before 3 reprocesses the batch: events whose state reached the
        changelog come back as duplicates (no second decision); the others are decided again,
        which the applier absorbs (first decision per transaction wins).
        """
        records = [_decision_record(d) for d in output.decisions]
        records += [_dead_letter_record(d) for d in output.dead_letters]
        self._publish(records, "decisions", stop)
        self.stats.decided += len(output.decisions)
        state_topic = self.settings.detector_state_topic
        self._publish(
            [changelog_record(state_topic, c) for c in output.state_changes], "state", stop
        )
        commit_offsets(consumer, output.offsets, on_retry=self._count_retry)
        self.stats.batches += 1

    # -- producing ---------------------------------------------------------------------------

    def _publish(self, records: Sequence[OutgoingRecord], what: str, stop: threading.Event) -> None:
        """Produce all records and wait until each is acknowledged; on a failed delivery, start
        over with a fresh producer (duplicates are absorbed downstream, nothing is skipped)."""
        if not records:
            return
        backoff = Backoff()
        while True:
            producer = self._producer or self._new_producer()
            self._producer = producer
            failures = FailedDeliveries()
            for record in records:
                produce_with_backpressure(
                    producer, record, on_delivery=failures, on_retry=self._count_retry
                )
            try:
                wait_for_deliveries(
                    producer, stop=stop, stop_grace_seconds=STOP_GRACE_SECONDS, what=what
                )
            except DeliveryTimeout as exc:
                raise DecisionPublishTimeout(f"{what}: {exc}; offsets not committed") from exc
            if not failures.errors:
                return
            self.stats.retries += 1
            log.warning(
                "%s: %d of %d deliveries failed (first: %s); resending with a new producer",
                what,
                len(failures.errors),
                len(records),
                failures.errors[0],
            )
            if stop.is_set():
                raise DecisionPublishError(
                    f"{what}: delivery failed while stopping: {failures.errors[0]}"
                )
            close_producer(producer, timeout=0)
            self._producer = None
            backoff.sleep(stop)

    def _new_producer(self) -> Producer:
        # No message timeout: during a broker outage librdkafka keeps retrying in order, and the
        # batch simply waits; a timeout would only turn the outage into resends.
        overrides: dict[str, Any] = {
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": 0,
        }
        return make_producer(self._bootstrap, client_id="txguard-detector", **overrides)

    def _count_retry(self) -> None:
        self.stats.retries += 1

    # -- rebalancing (called from inside consume(), between batches) ------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Incremental assignment: restore the new partitions' state before any of their records."""
        numbers = [p.partition for p in partitions]
        if not numbers:
            return
        started = time.monotonic()
        restored = restore_partitions(
            self._bootstrap,
            self.settings.detector_state_topic,
            numbers,
            group_id=self.settings.detector_group,
            timeout_seconds=RESTORE_TIMEOUT_SECONDS,
        )
        for number in numbers:
            states = restored.get(number, [])
            self.state.assign(number, states)
            self.stats.restored_accounts += len(states)
        log.info(
            "assigned partitions %s; restored %d account states in %.2f s",
            numbers,
            sum(len(states) for states in restored.values()),
            time.monotonic() - started,
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Every processed batch is already flushed and committed: nothing to do but forget.
        for partition in partitions:
            self.state.drop(partition.partition)
        if partitions:
            log.info("revoked partitions %s", [p.partition for p in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for partition in partitions:
            self.state.drop(partition.partition)
        log.warning("lost partitions %s", [p.partition for p in partitions])

    def _log_stats_periodically(self) -> None:
        now = time.monotonic()
        if now - self._stats_logged_at >= STATS_LOG_INTERVAL_SECONDS:
            self._stats_logged_at = now
            log.info("fraud detector: %s", asdict(self.stats))


def _decision_record(decision: FraudDecision) -> OutgoingRecord:
    encoded = encode_decision(decision)
    return OutgoingRecord(DECISIONS_TOPIC, encoded.key, encoded.value, encoded.headers)


def _dead_letter_record(dead: DeadLetter) -> OutgoingRecord:
    return OutgoingRecord(dead.topic, dead.key, dead.value, dead.headers)
