"""The decision applier: writes fraud decisions back to the store, then commits their offsets.

Per batch: decode -> `apply_decisions` in one database transaction (one multi-row UPDATE per
128 decisions, everything else prepared before the write lock is taken). The applied batches'
offsets are committed asynchronously at most every COMMIT_INTERVAL_SECONDS, when partitions are
revoked, and at stop.
Applying is idempotent (the first decision of a transaction wins), so a batch reprocessed after a
crash only yields "duplicate" results. "unknown" (no such transaction in this store) is normal
when several stores share the decisions topic. An undecodable decision is logged, counted and
skipped: decisions are written by txguard's own detector, so one that does not decode is a bug to
fix there, and no transaction depends on it.

A consumer whose group membership has not worked for `STALL_SECONDS` (`group_watch`) while the
cluster answers is replaced by a new one; while the cluster does not answer, it is left to rejoin
by itself. Closing a consumer waits at most `CLOSE_SECONDS` (`close_consumer`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import cast

from confluent_kafka import Consumer, Message, TopicPartition

from txguard.clock import now_us
from txguard.config import Settings
from txguard.kafka.consumer_loop import (
    Backoff,
    CommitReporter,
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
from txguard.kafka.serde import InvalidEvent, ReceivedHeaders, decode_decision
from txguard.kafka.topic_identity import (
    CHECK_SECONDS,
    TopicIdentity,
    TopicRecreated,
)
from txguard.observability import metrics
from txguard.schema.v1.decision_pb2 import FraudDecision
from txguard.store.interface import DecisionApplied, StoreLocked, TransactionStore
from txguard.store.sqlite import SqliteStore

log = logging.getLogger(__name__)

# consume() waits this long for a full batch: it bounds the latency added under light load.
CONSUME_TIMEOUT_SECONDS = 0.02
STATS_LOG_INTERVAL_SECONDS = 30.0
# Applied offsets are committed at most this often: a commit per batch costs the broker a request
# per batch (hundreds a second under light load, when batches are small). A crash loses at most
# this much of commits; the decisions are then applied again, which the store counts as duplicates.
COMMIT_INTERVAL_SECONDS = 0.2
# A locked database is retried this long before the applier gives up and exits.
STORE_RETRY_SECONDS = 120.0


class DecisionApplyError(RuntimeError):
    """The store kept failing to apply a batch of decisions."""


@dataclass
class ApplierStats:
    consumed: int = 0  # records consumed
    applied: int = 0  # decisions written to a pending transaction
    duplicates: int = 0  # the transaction already had a decision (replay or redelivery)
    unknown: int = 0  # no such transaction in this store
    invalid: int = 0  # records that did not decode as a FraudDecision; skipped
    retries: int = 0  # store or commit attempts retried
    batches: int = 0  # batches applied
    consumers_replaced: int = 0  # consumers replaced after the group membership stalled
    topic_recreations: int = 0  # times the decisions topic was found deleted and created again


class DecisionApplier:
    """Applies decisions from the decisions topic to one store."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: TransactionStore | None = None,
        group_stall_seconds: float = STALL_SECONDS,
        topic_check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self.settings = settings
        self._topic_check_seconds = topic_check_seconds
        self.stats = ApplierStats()
        self._store = store
        self._owns_store = store is None
        self.metrics = metrics.ConsumerMetrics("applier")
        self._results = metrics.Children(metrics.APPLIER_DECISIONS, "result")
        self._results.precreate(("applied", "duplicate", "unknown"))
        self._applied_latency = metrics.END_TO_END_LATENCY.labels("applied")
        # Applied but not yet committed offsets, per partition; committed by `_commit`.
        self._uncommitted = UncommittedOffsets()
        self._committed_at = time.monotonic()
        self._group_stall_seconds = group_stall_seconds
        self._group = GroupWatch(stall_seconds=group_stall_seconds)
        # Follows the decisions topic's id while running (`run`).
        self._identity: TopicIdentity | None = None

    def run(self, stop: threading.Event) -> None:
        """Apply until `stop` is set; the batch in hand is applied and committed first."""
        bootstrap = wait_for_kafka(self.settings, stop, what="decision applier")
        if bootstrap is None:
            return
        store = self._open_store()
        group = self.settings.applier_group
        consumer = self._new_consumer(bootstrap)
        identity = TopicIdentity(
            bootstrap, [self.settings.topics.decisions], check_seconds=self._topic_check_seconds
        )
        self._identity = identity
        stats_logged_at = time.monotonic()
        try:
            identity.learn()
            subscription = self._subscribe(consumer)
            while not stop.is_set():
                records = poll_batch(
                    consumer,
                    self.settings.consume_batch_size,
                    CONSUME_TIMEOUT_SECONDS,
                    metrics=self.metrics,
                    subscription=subscription,
                )
                if records:
                    # Store first, offsets second: a crash in between re-applies the batches,
                    # which the store turns into duplicates.
                    self.apply_batch(records, store)
                    self._uncommitted.add(next_offsets(records))
                    self.stats.batches += 1
                    batch_processed(consumer, self.metrics)
                if time.monotonic() - self._committed_at >= COMMIT_INTERVAL_SECONDS:
                    self._commit(consumer)
                for recreated in identity.check():
                    self._read_recreated_topic(consumer, identity, recreated)
                if self._group.stalled() and replace_stalled_consumer(
                    self._group, bootstrap, what="decision applier", group=group
                ):
                    self._retire(consumer, subscription)
                    consumer = self._new_consumer(bootstrap)
                    subscription = self._subscribe(consumer)
                if time.monotonic() - stats_logged_at >= STATS_LOG_INTERVAL_SECONDS:
                    stats_logged_at = time.monotonic()
                    log.info("decision applier: %s", asdict(self.stats))
            self._commit(consumer)
        finally:
            close_consumer(consumer, what="decision applier")
            self._identity = None
            identity.close()
            self.metrics.lag.forget_all()
            if self._owns_store:
                store.close()
                self._store = None
            log.info("decision applier stopped: %s", asdict(self.stats))

    def _new_consumer(self, bootstrap: str) -> Consumer:
        """A consumer of the applier group, watched by a new `GroupWatch`."""
        consumer, self._group = watched_consumer(
            bootstrap,
            group_id=self.settings.applier_group,
            client_id="txguard-applier",
            stall_seconds=self._group_stall_seconds,
            on_commit=CommitReporter(self._count_commit_retry),
        )
        return consumer

    def _subscribe(self, consumer: Consumer) -> Subscription:
        return subscribe(
            consumer,
            [self.settings.topics.decisions],
            metrics=self.metrics,
            on_revoke=self._commit_revoked,
            on_lost=self._forget_lost,
            identity=self._identity,
            what="decision applier",
        )

    def _retire(self, consumer: Consumer, subscription: Subscription) -> None:
        """Give up a consumer whose group membership stalled, before a new one subscribes.

        The applied offsets not committed yet are dropped: the group no longer counts this
        member, so the partitions' next owner applies those decisions again, as duplicates.
        """
        self.stats.consumers_replaced += 1
        self._uncommitted.take()
        retire_consumer(consumer, subscription, self.metrics, what="decision applier")

    def _read_recreated_topic(
        self, consumer: Consumer, identity: TopicIdentity, recreated: TopicRecreated
    ) -> None:
        """The decisions topic was deleted and created again while this applier read it: each
        partition held is read from its start (applying is idempotent), and offsets of the old
        topic not committed yet are dropped."""
        held = identity.read_from_start(consumer, recreated, what="decision applier")
        self._uncommitted.take_partitions(held)
        if not recreated.again:
            self.stats.topic_recreations += 1

    def _commit(self, consumer: Consumer) -> None:
        """Commit every applied offset not committed yet."""
        self._committed_at = time.monotonic()
        commit_offsets(
            consumer,
            self._uncommitted.take(),
            on_retry=self._count_commit_retry,
            identity=self._identity,
        )

    def _commit_revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before partitions go to another member: commit what was applied of them."""
        offsets = self._uncommitted.take_partitions(partitions)
        commit_offsets(
            consumer, offsets, on_retry=self._count_commit_retry, identity=self._identity
        )

    def _forget_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions lost without a revoke belong to another member already: no commit."""
        self._uncommitted.take_partitions(partitions)

    def apply_batch(
        self, records: Sequence[Message], store: TransactionStore | None = None
    ) -> list[DecisionApplied]:
        """Decode the records and apply their decisions in one database transaction."""
        store = store or self._open_store()
        decisions = self.decode_batch(records)
        if not decisions:
            return []
        results = self._apply_with_retry(store, decisions)
        applied_at_us = now_us()
        applied = duplicates = unknown = 0
        for decision, result in zip(decisions, results, strict=True):
            if result.result == "applied":
                applied += 1
                accepted_at_us = decision.accepted_at.ToMicroseconds()
                if accepted_at_us > 0:
                    self._applied_latency.observe((applied_at_us - accepted_at_us) / 1e6)
            elif result.result == "duplicate":
                duplicates += 1
            else:
                unknown += 1
        self.stats.applied += applied
        self.stats.duplicates += duplicates
        self.stats.unknown += unknown
        self._results["applied"].inc(applied)
        self._results["duplicate"].inc(duplicates)
        self._results["unknown"].inc(unknown)
        self.metrics.duplicates_dropped(duplicates)
        return results

    def decode_batch(self, records: Sequence[Message]) -> list[FraudDecision]:
        decisions: list[FraudDecision] = []
        for message in records:
            self.stats.consumed += 1
            headers = cast(ReceivedHeaders, message.headers())
            try:
                decisions.append(decode_decision(message.value(), headers))
            except InvalidEvent as exc:
                self.stats.invalid += 1
                self.metrics.skipped[exc.kind].inc()
                log.error(
                    "skipping undecodable decision %s[%s]@%s (%s): %s",
                    message.topic(),
                    message.partition(),
                    message.offset(),
                    exc.kind,
                    exc,
                    extra={
                        "topic": message.topic(),
                        "partition": message.partition(),
                        "offset": message.offset(),
                        "error_kind": exc.kind,
                    },
                )
        return decisions

    def _apply_with_retry(
        self, store: TransactionStore, decisions: list[FraudDecision]
    ) -> list[DecisionApplied]:
        backoff = Backoff(initial=0.2, maximum=5.0)
        deadline = time.monotonic() + STORE_RETRY_SECONDS
        while True:
            try:
                return store.apply_decisions(decisions, now_us())
            except (StoreLocked, sqlite3.OperationalError) as exc:
                # The write lock stayed taken past its deadline: another writer held it too long.
                if time.monotonic() >= deadline:
                    raise DecisionApplyError(f"store kept failing: {exc}") from exc
                self.stats.retries += 1
                self.metrics.retries["store_locked"].inc()
                log.warning("applying decisions failed (%s); retrying", exc)
                backoff.sleep()

    def _open_store(self) -> TransactionStore:
        if self._store is None:
            self._store = SqliteStore(self.settings.store_path)
        return self._store

    def _count_commit_retry(self) -> None:
        self.stats.retries += 1
        self.metrics.retries["commit"].inc()
