"""The fraud detector: consumes transactions, decides each one once, publishes the decisions.

Per batch: decode -> dedup -> state/features -> score -> decide -> emit (see
`FraudDetector.process_batch` and `FraudDetector.emit`); state and offsets are made durable by
checkpoints (`FraudDetector.checkpoint_step`). Delivery is at-least-once;
the per-account state restored from the changelog (its events' ids, and the offset below which it
reflects every record of its account) turns reprocessed events into duplicates, across restarts
and rebalances alike. A consumer whose group membership stalls while the cluster answers is
replaced, its partitions handled as lost (`group_watch`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import cast

import numpy as np
import numpy.typing as npt
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from txguard.clock import now_us
from txguard.config import Settings
from txguard.fraud.changelog import (
    ChangelogNotCopartitioned,
    changelog_record,
    check_copartitioned,
    restore_partitions,
)
from txguard.fraud.checkpoint import CHECKPOINT_STEP_ACCOUNTS, CheckpointRound
from txguard.fraud.dead_letter import DeadLetter, dead_letter_for
from txguard.fraud.decision_wire import DecisionWriter
from txguard.fraud.decisions import DecisionThresholds
from txguard.fraud.feature_batch import TransactionRow, decode_rows, observe_batch
from txguard.fraud.features import DAY_MS, TERMINAL_DELAY_DAYS
from txguard.fraud.live_model import LiveModel
from txguard.fraud.rules import default_rules
from txguard.fraud.scoring import Scorer, ScoreResult
from txguard.fraud.state import AccountHistory, DetectorState, StateChange
from txguard.fraud.terminal_table import NOT_STARTED_MS, TerminalTable, TerminalTableFollower
from txguard.kafka.consumer_loop import (
    CommitReporter,
    OutgoingRecord,
    Subscription,
    UncommittedOffsets,
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
    parse_transactions_topic_record,
)
from txguard.kafka.topic_identity import (
    CHECK_SECONDS,
    TopicIdentity,
    TopicRecreated,
)
from txguard.kafka.topics import ensure_topics
from txguard.observability import metrics
from txguard.schema.v1.decision_pb2 import Outcome
from txguard.schema.v1.detector_state_pb2 import AccountHistoryState

log = logging.getLogger(__name__)

# consume() waits this long for a full batch: under light load it bounds the added latency,
# under load the batch fills first.
CONSUME_TIMEOUT_SECONDS = 0.02
# On stop, how long to wait for the last records to be acknowledged.
STOP_GRACE_SECONDS = 10.0
STATS_LOG_INTERVAL_SECONDS = 30.0
RESTORE_TIMEOUT_SECONDS = 120.0
# While waiting for the terminal table, how long each poll of it may block.
TABLE_POLL_SECONDS = 0.05
_TERMINAL_DELAY_MS = TERMINAL_DELAY_DAYS * DAY_MS
_OUTCOME_LABELS: dict[int, str] = {
    Outcome.OUTCOME_APPROVE: "approve",
    Outcome.OUTCOME_REVIEW: "review",
    Outcome.OUTCOME_DECLINE: "decline",
}


@dataclass
class DetectorStats:
    """Running counters since start; logged periodically."""

    processed: int = 0  # records consumed, whatever became of them
    decided: int = 0  # decisions published
    # Events the account's state already reflects: its id is remembered, or its record lies below
    # the state's `next_offset`.
    duplicates_dropped: int = 0
    dead_lettered: int = 0  # records sent to the DLQ topic
    retries: int = 0  # transient failures retried (full queue, failed delivery, commit)
    batches: int = 0  # batches processed
    checkpoints: int = 0  # state + offsets made durable
    restored_accounts: int = 0  # account states read back from the changelog on assignment
    table_waits: int = 0  # batches that waited for the terminal table to catch up
    stale_table_batches: int = 0  # batches scored before the table caught up (bounded wait)
    accounts: int = 0  # accounts held in memory (at the last stats log)
    state_bytes_per_account: int = 0  # their history's memory, on average (at the last stats log)
    consumers_replaced: int = 0  # consumers replaced after the group membership stalled
    # Times the transactions topic was found deleted and created again (read again from the start).
    topic_recreations: int = 0


@dataclass
class BatchOutput:
    """What one batch produces, and the offsets to commit once all of it is acknowledged."""

    # The decisions, encoded for the decisions topic.
    decisions: list[OutgoingRecord] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    offsets: list[TopicPartition] = field(default_factory=list)


class FraudDetector:
    """One detector instance; run several in the same group to scale out (one per partition max)."""

    def __init__(
        self,
        settings: Settings,
        *,
        scorer: Scorer | None = None,
        on_loaded: Callable[[], None] | None = None,
        group_stall_seconds: float = STALL_SECONDS,
        topic_check_seconds: float = CHECK_SECONDS,
    ) -> None:
        """`on_loaded` is called once the terminal table is loaded, before the first record."""
        self.settings = settings
        self._topic_check_seconds = topic_check_seconds
        # The transactions topic's partition count, which the changelog's matches (`run`).
        self._partition_count = 0
        self._group_stall_seconds = group_stall_seconds
        self._group = GroupWatch(stall_seconds=group_stall_seconds)
        self._on_loaded = on_loaded
        self.topics = settings.topics
        self.live_model = LiveModel(settings) if scorer is None else None
        self.scorer: Scorer = scorer or cast(LiveModel, self.live_model).scorer
        self.thresholds = DecisionThresholds.from_settings(settings)
        self._writer = DecisionWriter(self.topics.decisions)
        self.velocity_window_ms = settings.velocity_window_seconds * 1000
        self.state = DetectorState()
        self.table: TerminalTable = TerminalTable()
        self.stats = DetectorStats()
        self.metrics = metrics.ConsumerMetrics("detector")
        self.decision_metrics = metrics.DecisionMetrics()
        # Every rule's counter exists from the start, so that rate() sees its first hit.
        self.decision_metrics.rule_hits.precreate(rule.code for rule in default_rules(settings))
        self._table_lag = metrics.TERMINAL_TABLE_LAG.labels("detector")
        self._model_shown = ""
        self._bootstrap = ""
        # Follows the transactions topic's id while running (`run`).
        self._identity: TopicIdentity | None = None
        self._publisher: ConfirmedPublisher | None = None
        self._follower: TerminalTableFollower | None = None
        # Offsets processed but not yet committed: committed at the next checkpoint.
        self._uncommitted = UncommittedOffsets()
        # Each assigned partition's next offset to process: the `next_offset` of state copies.
        self._positions: dict[int, int] = {}
        # A batch is between being recorded in the state and being sent (`run`).
        self._batch_unsent = False
        # The checkpoint being written, a few accounts per loop iteration (module `checkpoint`).
        self._round: CheckpointRound | None = None
        self._checkpointed_at = time.monotonic()
        self._stats_logged_at = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; then checkpoint, close, return."""
        bootstrap = wait_for_kafka(self.settings, stop, what="fraud detector")
        if bootstrap is None:
            return
        self._bootstrap = bootstrap
        group = self.settings.detector_group
        consumer = self._new_consumer(bootstrap)
        identity = TopicIdentity(
            bootstrap, [self.topics.transactions], check_seconds=self._topic_check_seconds
        )
        self._identity = identity
        try:
            # The group's own changelog is created on first start of a new group.
            ensure_topics(bootstrap, self.settings)
            # The id that states and offsets written from now on record.
            identity.learn()
            self._partition_count = check_copartitioned(
                self.settings.detector_state_topic,
                {
                    name: len(topic.partitions)
                    for name, topic in consumer.list_topics(timeout=30).topics.items()
                },
                transactions_topic=self.topics.transactions,
            )
            self._show_model()  # before the table loads: `txguard status` shows what will score
            self._follower = TerminalTableFollower(
                bootstrap, self.topics.terminal_risk, group_id=group
            )
            self._follower.load()
            self.table = self._follower.table
            if self._on_loaded is not None:
                self._on_loaded()
            self._publisher = ConfirmedPublisher(
                bootstrap,
                client_id="txguard-detector",
                on_retry=self._count_retry,
                stop_grace_seconds=STOP_GRACE_SECONDS,
            )
            subscription = self._subscribe(consumer)
            while not stop.is_set():
                records = poll_batch(
                    consumer,
                    self.settings.consume_batch_size,
                    CONSUME_TIMEOUT_SECONDS,
                    metrics=self.metrics,
                    subscription=subscription,
                )
                self._follower.poll()
                if records:
                    # Until the batch is sent, the state holds events without a decision: if
                    # either step fails, nothing may be checkpointed (see `_on_revoke`).
                    self._batch_unsent = True
                    self.emit(self.process_batch(records, stop))
                    self._batch_unsent = False
                    batch_processed(consumer, self.metrics)
                self.checkpoint_step(consumer, stop, len(records))
                for recreated in identity.check():
                    self._read_recreated_topic(consumer, identity, recreated)
                self._check_partition_count(identity.partitions(self.topics.transactions))
                if self._group.stalled() and replace_stalled_consumer(
                    self._group, bootstrap, what="fraud detector", group=group
                ):
                    self._retire(consumer, subscription)
                    consumer = self._new_consumer(bootstrap)
                    subscription = self._subscribe(consumer)
                self._log_stats_periodically()
            self.measure_state()  # Before closing: the revoke forgets the partitions' state.
            self.checkpoint(consumer, stop)
        except (PublishTimeout, PublishError) as exc:
            if not stop.is_set():
                raise
            # Safe: offsets since the last checkpoint were not committed; the next owner redoes
            # them.
            log.error("stopping without a final checkpoint (%s)", exc)
        finally:
            # Closing leaves the group; the revoke callback drops the partitions' state, which is
            # in the changelog up to the last checkpoint, as far as the committed offsets go.
            close_consumer(consumer, what="fraud detector")
            self._identity = None
            identity.close()
            if self._publisher is not None:
                self._publisher.close()
            if self._follower is not None:
                self._follower.close()
            log.info("fraud detector stopped: %s", asdict(self.stats))

    def _new_consumer(self, bootstrap: str) -> Consumer:
        """A consumer of the detector group, watched by a new `GroupWatch`."""
        consumer, self._group = watched_consumer(
            bootstrap,
            group_id=self.settings.detector_group,
            client_id="txguard-detector",
            stall_seconds=self._group_stall_seconds,
            on_commit=CommitReporter(self._count_commit_retry),
        )
        return consumer

    def _subscribe(self, consumer: Consumer) -> Subscription:
        subscription = subscribe(
            consumer,
            [self.topics.transactions],
            metrics=self.metrics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
            identity=self._identity,
            what="fraud detector",
        )
        # A run of failing reports counts from the subscription, not from the consumer's
        # creation: the terminal table is loaded in between, which can take longer than a stall.
        self._group.restart()
        return subscription

    def _retire(self, consumer: Consumer, subscription: Subscription) -> None:
        """Give up a consumer whose group membership stalled, before a new one subscribes.

        Its partitions are handled as lost: their state is dropped (the changelog has it up to
        the last checkpoint, which the next owner restores) and their offsets not committed yet
        are forgotten (the next owner reprocesses since the last commit, and deduplicates).
        """
        self.stats.consumers_replaced += 1
        held = [TopicPartition(self.topics.transactions, p) for p in self.state.partitions]
        if held:
            self._on_lost(consumer, held)
        retire_consumer(consumer, subscription, self.metrics, what="fraud detector")

    def _read_recreated_topic(
        self, consumer: Consumer, identity: TopicIdentity, recreated: TopicRecreated
    ) -> None:
        """The transactions topic was deleted and created again while this detector read it.

        Every record of the new topic is new here, whatever its offset, and its offsets say
        nothing of the old topic's: each partition held is read again from its beginning, the
        state's offsets of the old topic are forgotten (a record already decided since the new
        topic began is recognised by its event id), and offsets of the old topic not committed
        yet are dropped, with the part of a checkpoint round that would commit or stamp them.
        """
        self._check_partition_count(recreated.partitions)
        # Offsets and states of the old topic go first: until every partition has moved to its
        # start, both are still written with the old id, which a later reader does not trust.
        held = [TopicPartition(recreated.topic, p) for p in self.state.partitions]
        self._uncommitted.take_partitions(held)
        if self._round is not None:
            self._round.drop_partitions(held)
        cleared = 0
        for partition in held:
            self._positions.pop(partition.partition, None)
            cleared += self.state.forget_offsets(partition.partition)
        identity.read_from_start(consumer, recreated, what="fraud detector")
        if recreated.again:
            return
        self.stats.topic_recreations += 1
        log.warning(
            "fraud detector: the offsets of the old topic in the state of %d accounts are "
            "forgotten; records decided already are recognised by event id",
            cleared,
        )

    # -- the pipeline, one step per method ---------------------------------------------------

    def process_batch(
        self, records: Sequence[Message], stop: threading.Event | None = None
    ) -> BatchOutput:
        """decode -> wait for the terminal table -> dedup -> state/features -> score -> decide."""
        output = BatchOutput(offsets=next_offsets(records))
        self.stats.batches += 1
        self.stats.processed += len(records)
        rows = decode_rows(records, partial(self._decode, output=output))
        if not rows:
            return output
        self._await_terminal_table(max(row.occurred_ms for row in rows), stop)
        observed = observe_batch(
            self.state, self.table, rows, velocity_window_ms=self.velocity_window_ms
        )
        if observed.duplicates:
            self.stats.duplicates_dropped += observed.duplicates
            self.metrics.duplicates_dropped(observed.duplicates)
        batch = observed.features
        if not len(batch):
            return output
        decided_at_us = now_us()
        if self.live_model is not None:
            # Between batches only: each partition switches model at exactly one offset.
            self.scorer = self.live_model.refreshed()
        scorer = self.scorer
        results = scorer.score_batch(batch)
        scores = np.array([result.score for result in results], dtype=np.float64)
        outcomes = self.thresholds.outcomes(scores)
        output.decisions = self._writer.records(
            batch.rows,
            results,
            outcomes,
            model_version=scorer.model_version,
            rules_version=scorer.rules_version,
            decided_at_us=decided_at_us,
            shadow_model_version=scorer.shadow_model_version,
            features=batch.values.tolist() if self.settings.decision_features else None,
        )
        self._observe_decisions(batch.rows, results, scores, outcomes, decided_at_us)
        return output

    def _show_model(self) -> None:
        """Export the scorer's version and kind (`txguard_model_info`) when they changed."""
        if self.scorer.model_version != self._model_shown:
            self._model_shown = self.scorer.model_version
            self.decision_metrics.set_model(self.scorer.model_version, self.scorer.model_kind)

    def _observe_decisions(
        self,
        rows: Sequence[TransactionRow],
        results: Sequence[ScoreResult],
        scores: npt.NDArray[np.float64],
        outcomes: Sequence[int],
        decided_at_us: int,
    ) -> None:
        """Outcomes, scores, rule hits and accepted-to-decided latency of a batch's decisions,
        counted per batch: one update per outcome and rule, one per histogram."""
        self._show_model()
        for outcome, count in Counter(outcomes).items():
            self.decision_metrics.outcomes[_OUTCOME_LABELS.get(outcome, "approve")].inc(count)
        # Every reason counted at once (in C), then only the rules' kept: few distinct codes.
        reasons = Counter([reason.code for result in results for reason in result.reasons])
        for code, count in reasons.items():
            if code.startswith("rule."):
                self.decision_metrics.rule_hits[code].inc(count)
        metrics.observe_many(metrics.FRAUD_SCORE, scores)
        accepted = np.array([row.accepted_seconds for row in rows], dtype=np.float64)
        metrics.observe_many(
            self.decision_metrics.decided_latency,
            np.maximum(0.0, decided_at_us / 1e6 - accepted),
        )

    def _decode(self, message: Message, output: BatchOutput) -> TransactionRow | None:
        """The transaction, or None for a watermark and for a poison record (set aside for the
        DLQ). `decode_rows` reads the usual records itself and calls this for the others."""
        try:
            event = parse_transactions_topic_record(
                message.value(), cast(ReceivedHeaders, message.headers())
            )
            if event is None:
                return None  # A watermark: event-time progress for the terminal-risk aggregator.
            return TransactionRow.of(
                cast(int, message.partition()), event, offset=cast(int, message.offset())
            )
        except InvalidEvent as exc:
            output.dead_letters.append(
                dead_letter_for(message, exc, topic=self.topics.dead_letters)
            )
            self.stats.dead_lettered += 1
            self.metrics.dead_lettered[exc.kind].inc()
            log.warning(
                "dead-lettering %s[%s]@%s: %s",
                message.topic(),
                message.partition(),
                message.offset(),
                exc,
            )
            return None

    def _await_terminal_table(self, latest_event_ms: int, stop: threading.Event | None) -> None:
        """Wait until the terminal table is complete for the batch's latest event time: its
        transactions up to t - 7 days and its labels known by t (bounded by the setting)."""
        follower = self._follower
        if follower is None:
            return
        need = (latest_event_ms - _TERMINAL_DELAY_MS, latest_event_ms)
        complete = self.table.complete_until()
        # How far the table's labels trail the transactions being scored, in event time; not a
        # number until the table has a watermark at all.
        self._table_lag.set(
            math.nan
            if complete.labels_ms == NOT_STARTED_MS
            else max(0.0, (latest_event_ms - complete.labels_ms) / 1000)
        )
        if complete.covers(*need):
            return
        max_wait_ms = self.settings.terminal_table_max_wait_ms
        if max_wait_ms == 0:
            self.stats.stale_table_batches += 1
            return
        self.stats.table_waits += 1
        deadline = None if max_wait_ms is None else time.monotonic() + max_wait_ms / 1000
        while not self.table.complete_until().covers(*need):
            if stop is not None and stop.is_set():
                return
            if deadline is not None and time.monotonic() >= deadline:
                self.stats.stale_table_batches += 1
                return
            follower.poll(timeout=TABLE_POLL_SECONDS)

    def emit(self, output: BatchOutput) -> None:
        """Send the batch's decisions and dead letters now; they are confirmed at the checkpoint."""
        publisher = cast(ConfirmedPublisher, self._publisher)
        publisher.send(output.decisions + [_dead_letter_record(d) for d in output.dead_letters])
        self.stats.decided += len(output.decisions)
        produced = self.metrics.produced
        if output.decisions:
            produced[self.topics.decisions].inc(len(output.decisions))
        if output.dead_letters:
            produced[self.topics.dead_letters].inc(len(output.dead_letters))
        self._uncommitted.add(output.offsets)
        for offset in output.offsets:
            self._positions[offset.partition] = offset.offset

    def checkpoint_step(
        self, consumer: Consumer, stop: threading.Event, batch_records: int = 0
    ) -> None:
        """One step of the checkpoint, once per loop iteration after the batch (of
        `batch_records`) is emitted; a round begins when one is due (module `checkpoint`).

        What a checkpoint makes durable, in this order, is the guarantee:

        1. decisions and dead letters sent before the round began -> every delivery confirmed;
        2. the state of every account changed before the round began -> changelog -> every
           delivery confirmed;
        3. only then the offsets processed before the round began are committed (asynchronously:
           a synchronous commit can hang while the coordinator is unreachable).

        Decisions go before state so that the changelog never says "seen" for an event whose
        decision was lost. A crash before 3 reprocesses since the last commit: events whose state
        reached the changelog come back as duplicates (no second decision); the others are
        decided again, which the applier absorbs (first decision per transaction wins).

        Steps 1 and 3 do not wait while acknowledgements are outstanding, for up to half the
        interval: the loop goes on and the step looks again at the next iteration. Step 2 sends
        at least `CHECKPOINT_STEP_ACCOUNTS` (and at least `batch_records`) states per iteration.
        """
        publisher = self._publisher
        if publisher is None:
            return
        round_ = self._round
        if round_ is None:
            due_at = self._checkpointed_at + self.settings.checkpoint_interval_ms / 1000
            if time.monotonic() < due_at:
                return
            if not self._uncommitted and publisher.pending == 0:
                self._checkpointed_at = time.monotonic()
                return
            if not self._confirmed(publisher, stop, waiting_since=due_at):
                return
            self._checkpointed_at = time.monotonic()
            round_ = self._round = CheckpointRound(
                self.state.take_changed_copies(self._positions), self._uncommitted.take()
            )
        if round_.accounts_left:
            self._write_state(round_.next_accounts(max(CHECKPOINT_STEP_ACCOUNTS, batch_records)))
            round_.written_at = time.monotonic()
            return
        if not self._confirmed(publisher, stop, waiting_since=round_.written_at):
            return
        self._round = None
        commit_offsets(
            consumer,
            round_.take_offsets(),
            on_retry=self._count_commit_retry,
            identity=self._identity,
        )
        self.stats.checkpoints += 1

    def checkpoint(self, consumer: Consumer, stop: threading.Event) -> None:
        """Make everything processed so far durable now, in the order of `checkpoint_step`
        (on revoke and at stop); a round in progress is finished with it."""
        self._checkpointed_at = time.monotonic()
        publisher = self._publisher
        if publisher is None:
            return
        round_, self._round = self._round or CheckpointRound((), ()), None
        if round_.empty and not self._uncommitted and publisher.pending == 0:
            return
        publisher.confirm(stop, what="decisions")
        round_.extend(self.state.take_changed_copies(self._positions), self._uncommitted.take())
        self._write_state(round_.all_accounts())
        publisher.confirm(stop, what="state")
        commit_offsets(
            consumer,
            round_.take_offsets(),
            on_retry=self._count_commit_retry,
            identity=self._identity,
        )
        self.stats.checkpoints += 1

    def _confirmed(
        self, publisher: ConfirmedPublisher, stop: threading.Event, *, waiting_since: float
    ) -> bool:
        """Whether everything sent is acknowledged; waits for it once half the interval has
        passed since `waiting_since` (monotonic seconds)."""
        if publisher.try_confirm():
            return True
        patience = self.settings.checkpoint_interval_ms / 2000
        if time.monotonic() - waiting_since < patience:
            return False
        publisher.confirm(stop, what="checkpoint")
        return True

    def _write_state(self, accounts: Sequence[tuple[int, AccountHistory]]) -> None:
        """Send these account states to the changelog (confirmed by a later step), each with the
        id of the transactions topic its offsets count in."""
        topic = self.settings.detector_state_topic
        identity = self._identity
        topic_id = (identity.topic_id(self.topics.transactions) if identity else None) or ""
        records = [
            changelog_record(topic, StateChange(partition, history.to_proto(topic_id)))
            for partition, history in accounts
        ]
        cast(ConfirmedPublisher, self._publisher).send(records)

    def _count_retry(self) -> None:
        self.stats.retries += 1
        self.metrics.retries["produce"].inc()

    def _count_commit_retry(self) -> None:
        self.stats.retries += 1
        self.metrics.retries["commit"].inc()

    # -- rebalancing (called from inside consume(), between batches) ------------------------

    def _check_partition_count(self, count: int | None) -> None:
        """Partitions added to the transactions topic (kafka-topics --alter), or the topic created
        again with another count, end its co-partitioning with the changelog: an account's new
        events go to another partition than its state, whose features would start from nothing.
        The detector stops (exit code 2)."""
        if count is not None and self._partition_count and count != self._partition_count:
            raise self._partitions_added(f"has {count} partitions now")

    def _partitions_added(self, found: str) -> ChangelogNotCopartitioned:
        return ChangelogNotCopartitioned(
            f"{self.topics.transactions} {found}, but {self.settings.detector_state_topic} has "
            f"{self._partition_count}: partitions were added to it (or it was created again), and "
            "accounts' events no longer go to the partition of their state; see 'Changing a "
            "partition count' in docs/operations.md"
        )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Incremental assignment: restore the new partitions' state before any of their records."""
        numbers = [p.partition for p in partitions]
        if not numbers:
            return
        if self._partition_count and max(numbers) >= self._partition_count:
            # librdkafka saw the added partitions before the topic's count was checked.
            raise self._partitions_added(f"has partition {max(numbers)}")
        started = time.monotonic()
        with metrics.STATE_RESTORE_DURATION.labels("detector").time():
            restored = restore_partitions(
                self._bootstrap,
                self.settings.detector_state_topic,
                numbers,
                group_id=self.settings.detector_group,
                timeout_seconds=RESTORE_TIMEOUT_SECONDS,
            )
        topic_id = self._current_topic_id()
        for number in numbers:
            states = restored.get(number, [])
            self.state.assign(number, states)
            self.stats.restored_accounts += len(states)
            self._check_offsets(consumer, number, states, topic_id)
        log.info(
            "assigned partitions %s; restored %d account states in %.2f s",
            numbers,
            sum(len(states) for states in restored.values()),
            time.monotonic() - started,
        )

    def _current_topic_id(self) -> str | None:
        """The transactions topic's id now; None when it cannot be known."""
        if self._identity is None:
            return None
        try:
            return self._identity.current(self.topics.transactions)
        except (KafkaException, TimeoutError) as exc:
            log.warning("topic id of %s not known (%s)", self.topics.transactions, exc)
            return None

    def _check_offsets(
        self,
        consumer: Consumer,
        partition: int,
        states: Sequence[AccountHistoryState],
        topic_id: str | None,
    ) -> None:
        """Forget the restored states' offsets if they count in a transactions topic deleted and
        created again since they were written: its new records are not redeliveries. Told by the
        topic id a state records, or for states that record none (written before it was
        recorded), by the partition ending below their offsets."""
        recorded = max((state.next_offset for state in states), default=0)
        if not recorded:
            return
        # Without the topic's id now, a state that records one is not trusted either.
        other = {state.transactions_topic_id for state in states} - {"", topic_id}
        if other:
            cleared = self.state.forget_offsets(partition)
            log.warning(
                "partition %d of %s: the state of %d accounts counts offsets in the topic before "
                "it was deleted and created again (topic id %s, now %s); its records are decided "
                "anew, duplicates recognised by event id only",
                partition,
                self.topics.transactions,
                cleared,
                ", ".join(sorted(other)),
                topic_id or "not known",
            )
            return
        _, end = consumer.get_watermark_offsets(
            TopicPartition(self.topics.transactions, partition), timeout=RESTORE_TIMEOUT_SECONDS
        )
        if end >= recorded:
            return
        cleared = self.state.forget_offsets(partition)
        log.warning(
            "partition %d of %s ends at offset %d, but the state of %d accounts reflects records "
            "up to offset %d: the topic was recreated; its records are decided anew, duplicates "
            "recognised by event id only",
            partition,
            self.topics.transactions,
            end,
            cleared,
            recorded,
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Checkpoint first, so the next owner starts from this instance's latest state; unless
        # the loop failed with a batch recorded in the state but not sent (the revoke of the
        # closing consumer): that state would make its events duplicates that were never decided.
        if partitions and self._batch_unsent:
            log.error(
                "revoke: a batch failed before its decisions were sent; no checkpoint, the next "
                "owner reprocesses since the last commit"
            )
        elif partitions and self._publisher is not None:
            try:
                self.checkpoint(consumer, threading.Event())
            except (PublishTimeout, PublishError) as exc:
                log.error("revoke: checkpoint failed (%s); the next owner reprocesses", exc)
        for partition in partitions:
            self.state.drop(partition.partition)
            self._positions.pop(partition.partition, None)
        self._uncommitted.take_partitions(partitions)
        if partitions:
            log.info("revoked partitions %s", [p.partition for p in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for partition in partitions:
            self.state.drop(partition.partition)
            self._positions.pop(partition.partition, None)
        self._uncommitted.take_partitions(partitions)
        if self._round is not None:
            self._round.drop_partitions(partitions)
        log.warning("lost partitions %s", [p.partition for p in partitions])

    def _log_stats_periodically(self) -> None:
        now = time.monotonic()
        if now - self._stats_logged_at >= STATS_LOG_INTERVAL_SECONDS:
            self._stats_logged_at = now
            self.measure_state()
            log.info("fraud detector: %s", asdict(self.stats))

    def measure_state(self) -> None:
        """Accounts in memory and the bytes their histories take per account."""
        accounts = self.state.account_total()
        self.stats.accounts = accounts
        self.stats.state_bytes_per_account = (
            self.state.memory_bytes() // accounts if accounts else 0
        )


def _dead_letter_record(dead: DeadLetter) -> OutgoingRecord:
    return OutgoingRecord(dead.topic, dead.key, dead.value, dead.headers)
