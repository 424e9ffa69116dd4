"""The outbox relay: publishes the store's outbox to Kafka in commit order, then marks it sent.

Only one relay publishes a store at a time (a lock file beside the database). Each round reads the
oldest unpublished events, produces them with the idempotent producer, waits until every one of
them is either acknowledged or failed, and marks published exactly those that were acknowledged. A
failed delivery is not marked: the relay backs off, starts a fresh producer and resends from the
oldest unpublished event. Duplicates are fine downstream (consumers deduplicate by event id);
reordering is not, so there is no message timeout: during a broker outage librdkafka keeps retrying
in order and the round waits.

Marking: inside `txguard serve transactions` the relay hands the acknowledged events to the API's
group-commit writer (the store's `PublishedHandoff`), which marks them in its next batch
transaction, so the relay takes no write lock; the relay reads past them (`after_seq`) meanwhile.
A relay in its own process (`txguard serve relay`) marks them itself, gathering the marks of
MARK_INTERVAL_SECONDS into one write. Either way an event is only ever marked after Kafka
acknowledged it, and a crash before the mark only publishes it again.

Between rounds the relay waits for the store to tell it of a commit (the store's outbox bell, rung
by the API's writer in this process or another), or at most IDLE_POLL_SECONDS.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from txguard.clock import now_us
from txguard.config import Settings
from txguard.kafka.clients import make_producer, resolve_bootstrap
from txguard.kafka.consumer_loop import (
    Backoff,
    DeliveryTimeout,
    OutgoingRecord,
    close_producer,
    produce_with_backpressure,
    wait_for_deliveries,
    wait_for_kafka,
)
from txguard.observability import metrics
from txguard.store.interface import (
    OutboxBacklog,
    PendingOutboxEvent,
    PublishedEvents,
    RelayLock,
    TransactionStore,
)
from txguard.store.sqlite import SqliteRelayLock, SqliteStore

log = logging.getLogger(__name__)

# Between rounds when the outbox was drained and no commit woke the relay: bounds the added
# latency where the store has no bell to ring; costs one indexed query.
IDLE_POLL_SECONDS = 0.05
# A relay in its own process marks acknowledged events at most this often: each mark takes the
# store's write lock from the API's writer and the applier. A crash loses at most this much of
# marks; those events are published again and dropped downstream as duplicates.
MARK_INTERVAL_SECONDS = 0.1
LOCK_RETRY_SECONDS = 1.0
PRUNE_INTERVAL_SECONDS = 60.0
# On stop, how long the in-flight round may still wait for its delivery reports.
STOP_GRACE_SECONDS = 10.0
STATS_LOG_INTERVAL_SECONDS = 30.0
# How often the backlog gauges re-read the outbox (one indexed COUNT on its own connection).
BACKLOG_SAMPLE_SECONDS = 2.0


class RelayLockHeld(RuntimeError):
    """Another relay holds this store's outbox; this one must not publish it."""


class RelayDeliveryFailed(RuntimeError):
    """Some events of a round were not acknowledged; they stay unpublished and are resent."""

    def __init__(self, failed: int, first_error: KafkaError) -> None:
        super().__init__(f"{failed} outbox events not delivered (first error: {first_error})")
        self.failed = failed
        self.first_error = first_error


@dataclass
class RelayStats:
    published: int = 0  # events acknowledged by Kafka and marked (or handed over to mark)
    failed_deliveries: int = 0  # delivery reports with an error (the events are resent)
    retries: int = 0  # full local queue, or a round restarted after failed deliveries
    pruned: int = 0  # published events deleted after the retention period


class _RoundFailures:
    """The failed deliveries of one round: with `delivery.report.only.error` only they report."""

    def __init__(self) -> None:
        self.failed_seqs: set[int] = set()
        self.errors: list[KafkaError] = []

    def report(self, item: PendingOutboxEvent, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self.failed_seqs.add(item.seq)
            self.errors.append(error)

    def acknowledged(self, produced: list[PendingOutboxEvent]) -> list[PendingOutboxEvent]:
        """Once every report is in: the events of `produced` that did not fail."""
        if not self.failed_seqs:
            return produced
        return [item for item in produced if item.seq not in self.failed_seqs]


class _PendingMarks:
    """Acknowledged events a relay in its own process has still to mark published."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._seqs: list[int] = []
        self._published_at_us = 0
        self._since: float | None = None

    def add(self, events: PublishedEvents) -> None:
        self._seqs.extend(events.seqs)
        self._published_at_us = events.published_at_us
        if self._since is None:
            self._since = time.monotonic()

    def due_in(self) -> float | None:
        """Seconds until the pending marks are due (0: now); None when nothing is pending."""
        if self._since is None:
            return None
        return max(0.0, self._since + self._interval - time.monotonic())

    def flush(self, store: TransactionStore) -> None:
        """Mark every pending event, in one write transaction."""
        if self._seqs:
            store.mark_published(self._seqs, self._published_at_us)
        self._seqs = []
        self._since = None


class _RelayMetrics:
    """The relay's metric children, resolved once."""

    def __init__(self) -> None:
        self.published = metrics.Children(metrics.OUTBOX_PUBLISHED, "topic")
        self.retries = metrics.Children(metrics.RETRIES, "reason", {"service": "relay"})
        self.published_latency = metrics.END_TO_END_LATENCY.labels("published")

    def count_published(self, delivered: list[PendingOutboxEvent], marked_at_us: int) -> None:
        by_topic: dict[str, int] = {}
        observe = self.published_latency.observe
        for item in delivered:
            topic = item.event.topic
            by_topic[topic] = by_topic.get(topic, 0) + 1
            observe((marked_at_us - item.created_at_us) / 1e6)
        for topic, count in by_topic.items():
            self.published[topic].inc(count)


class OutboxBacklogSampler:
    """Keeps the backlog gauges current from a thread of its own, on its own store connection.

    Separate from the publishing rounds so that the gauges move while a round waits on an
    unreachable broker, or while the relay waits for Kafka or for another relay's lock. The age
    is computed at scrape time from the oldest event's creation time.
    """

    def __init__(self, store_path: Path, *, interval: float = BACKLOG_SAMPLE_SECONDS) -> None:
        self._store_path = store_path
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-backlog", daemon=True)
        self._oldest_created_us: int | None = None

    def start(self) -> None:
        metrics.OUTBOX_OLDEST_AGE.set_function(self.oldest_age_seconds)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def oldest_age_seconds(self) -> float:
        oldest = self._oldest_created_us
        return 0.0 if oldest is None else max(0.0, (now_us() - oldest) / 1e6)

    def record(self, backlog: OutboxBacklog) -> None:
        self._oldest_created_us = backlog.oldest_created_at_us if backlog.count else None
        metrics.OUTBOX_BACKLOG.set(backlog.count)

    def _run(self) -> None:
        store: SqliteStore | None = None
        failing = False
        try:
            while not self._stop.is_set():
                try:
                    store = store or SqliteStore(self._store_path)
                    self.record(store.outbox_backlog())
                    failing = False
                except Exception as exc:
                    # A gauge must never take the relay down: report once, keep trying.
                    if not failing:
                        log.warning("outbox backlog not measurable: %s", exc)
                        failing = True
                self._stop.wait(self._interval)
        finally:
            if store is not None:
                store.close()


class OutboxRelay:
    """Publishes one store's outbox. `run(stop)` loops; `publish_pending()` is one round.

    The store is opened lazily on the thread that publishes (SQLite connections belong to one
    thread); a store passed in must be used from that thread too, and is not closed here.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: TransactionStore | None = None,
        lock: RelayLock | None = None,
        bootstrap: str | None = None,
    ) -> None:
        self.settings = settings
        self.stats = RelayStats()
        self._store = store
        self._owns_store = store is None
        self._lock: RelayLock = lock or SqliteRelayLock(settings.store_path)
        self._lock_held = False
        self._bootstrap = bootstrap
        self._producer: Producer | None = None
        self._pruned_at = 0.0
        self._metrics = _RelayMetrics()
        # Every unpublished event up to this seq was acknowledged and handed over to be marked:
        # the next round reads after it. 0 after any failure: read from the oldest unpublished.
        self._acknowledged_through = 0
        self._marks = _PendingMarks(MARK_INTERVAL_SECONDS)

    def run(self, stop: threading.Event) -> None:
        """Publish until `stop` is set; then finish the round in flight (bounded) and release."""
        sampler = OutboxBacklogSampler(self.settings.store_path)
        sampler.start()
        try:
            if not self._wait_for_lock(stop):
                return
            if self._bootstrap is None:
                self._bootstrap = wait_for_kafka(self.settings, stop, what="outbox relay")
                if self._bootstrap is None:
                    return
            backoff = Backoff(initial=0.2, maximum=10.0)
            stats_logged_at = time.monotonic()
            while not stop.is_set():
                try:
                    published = self._publish_round_with_lock(stop)
                    self._flush_marks_if_due()
                except RelayDeliveryFailed as exc:
                    log.warning("outbox relay: %s; resending with a new producer", exc)
                    self.stats.retries += 1
                    self._metrics.retries["delivery_failed"].inc()
                    self._drop_producer()
                    backoff.sleep(stop)
                    continue
                except DeliveryTimeout as exc:
                    log.warning("outbox relay stopping with events in flight: %s", exc)
                    break
                except Exception:
                    # The relay must outlive any one failure (a locked database, a producer
                    # error): nothing is marked unless acknowledged, so trying again is safe.
                    log.exception("outbox relay round failed; retrying")
                    self.stats.retries += 1
                    self._metrics.retries["round_failed"].inc()
                    self._drop_producer()
                    backoff.sleep(stop)
                    continue
                backoff.reset()
                self.prune_published_if_due()
                if time.monotonic() - stats_logged_at >= STATS_LOG_INTERVAL_SECONDS:
                    stats_logged_at = time.monotonic()
                    log.info("outbox relay: %s", asdict(self.stats))
                if published < self.settings.relay_batch_size:
                    if self._producer is not None:
                        # Serves the statistics callback, which an idle producer would queue up.
                        self._producer.poll(0)
                    # Woken by a commit; `stop` is seen within the poll interval.
                    marks_due = self._marks.due_in()
                    timeout = IDLE_POLL_SECONDS if marks_due is None else marks_due
                    self._open_store().wait_for_outbox(min(IDLE_POLL_SECONDS, timeout))
        finally:
            sampler.stop()
            self.close()

    def publish_pending(self, stop: threading.Event | None = None) -> int:
        """One round: publish the oldest unpublished events; returns how many were marked.

        Everything acknowledged is marked (or handed over to be marked) before it returns.
        Raises RelayLockHeld if another relay holds the store, RelayDeliveryFailed if any event was
        not acknowledged (the acknowledged ones are marked all the same), DeliveryTimeout if
        `stop` is set and the reports do not arrive within the grace period (then nothing of the
        round is marked: it is published again, and consumers drop the duplicates).
        """
        try:
            published = self._publish_round_with_lock(stop)
        except RelayDeliveryFailed:
            self._marks.flush(self._open_store())
            raise
        self._marks.flush(self._open_store())
        return published

    def _publish_round_with_lock(self, stop: threading.Event | None) -> int:
        """`publish_pending` without flushing the marks: `run` writes them when they are due."""
        if not self._lock_held:
            if not self._lock.try_acquire():
                raise RelayLockHeld(f"another relay publishes the outbox of {self._store_path()}")
            self._lock_held = True
        store = self._open_store()
        try:
            return self._publish_round(store, stop)
        except BaseException:
            self._acknowledged_through = 0
            raise

    def _publish_round(self, store: TransactionStore, stop: threading.Event | None) -> int:
        if self._acknowledged_through == 0:
            # Reading from the oldest unpublished event: the acknowledged ones are marked first.
            self._marks.flush(store)
        pending = store.pending_outbox(self.settings.relay_batch_size, self._acknowledged_through)
        if not pending:
            return 0
        producer = self._get_producer()
        failures = _RoundFailures()
        for item in pending:
            produce_with_backpressure(
                producer,
                _outgoing(item),
                on_delivery=partial(failures.report, item),
                on_retry=self._count_retry,
            )
        # Wait for every outcome before reading the next round: rounds never overlap, so a
        # later event can never overtake an earlier one that is being retried. flush() sends
        # at once, without waiting for linger.ms.
        wait_for_deliveries(
            producer,
            stop=stop or threading.Event(),
            stop_grace_seconds=STOP_GRACE_SECONDS,
            what="outbox relay",
        )
        delivered = failures.acknowledged(pending)
        if delivered:
            marked_at_us = now_us()
            acknowledged = PublishedEvents(tuple(item.seq for item in delivered), marked_at_us)
            # Only after every report is in: nothing unacknowledged is ever marked.
            if not store.published_handoff().offer(acknowledged):
                self._marks.add(acknowledged)
            if not failures.errors:
                self._acknowledged_through = pending[-1].seq
            self.stats.published += len(delivered)
            self._metrics.count_published(delivered, marked_at_us)
        if failures.errors:
            self.stats.failed_deliveries += len(failures.errors)
            metrics.OUTBOX_DELIVERY_FAILURES.inc(len(failures.errors))
            raise RelayDeliveryFailed(len(failures.errors), failures.errors[0])
        return len(delivered)

    def prune_published(self, now: int | None = None) -> int:
        """Delete events published more than `outbox_retention_seconds` ago; returns how many."""
        store = self._open_store()
        retention_us = self.settings.outbox_retention_seconds * 1_000_000
        pruned = store.prune_published((now_us() if now is None else now) - retention_us)
        self.stats.pruned += pruned
        metrics.OUTBOX_PRUNED.inc(pruned)
        if pruned:
            log.info("outbox relay: pruned %d published events", pruned)
        return pruned

    def prune_published_if_due(self) -> None:
        if time.monotonic() - self._pruned_at >= PRUNE_INTERVAL_SECONDS:
            self._pruned_at = time.monotonic()
            self.prune_published()

    def close(self) -> None:
        """Close the producer (bounded wait), mark what is pending, close the store if opened
        here, and release the lock."""
        self._drop_producer(timeout=STOP_GRACE_SECONDS)
        if self._store is not None:
            try:
                self._marks.flush(self._store)
            except Exception as exc:
                # Unmarked events are published again by the next relay: nothing is lost.
                log.warning("outbox relay: marks not written at close: %s", exc)
        if self._owns_store and self._store is not None:
            self._store.close()
            self._store = None
        if self._lock_held:
            self._lock.release()
            self._lock_held = False

    def _wait_for_lock(self, stop: threading.Event) -> bool:
        logged = False
        while not stop.is_set():
            if self._lock.try_acquire():
                self._lock_held = True
                if logged:
                    log.info("outbox relay: lock acquired; publishing")
                return True
            if not logged:
                log.info(
                    "outbox relay: another relay publishes %s; waiting for its lock",
                    self._store_path(),
                )
                logged = True
            stop.wait(LOCK_RETRY_SECONDS)
        return False

    def _open_store(self) -> TransactionStore:
        if self._store is None:
            self._store = SqliteStore(self.settings.store_path)
        return self._store

    def _store_path(self) -> str:
        return str(self.settings.store_path)

    def _get_producer(self) -> Producer:
        if self._producer is None:
            if self._bootstrap is None:
                self._bootstrap = resolve_bootstrap(self.settings)
            overrides: dict[str, Any] = {
                "enable.idempotence": True,
                "acks": "all",
                # Infinite: a message never expires, so an outage can only delay it, not
                # fail it and let a later event overtake it on resend.
                "message.timeout.ms": 0,
                # A report per acknowledged event would take the GIL back once per event, each
                # time waiting for the API's event loop thread; once flush() has returned, every
                # event without a report was acknowledged.
                "delivery.report.only.error": True,
            }
            self._producer = make_producer(
                self._bootstrap, client_id="txguard-outbox-relay", statistics=True, **overrides
            )
        return self._producer

    def _flush_marks_if_due(self) -> None:
        if self._marks.due_in() == 0.0 and self._store is not None:
            try:
                self._marks.flush(self._store)
            except BaseException:
                # No reading ahead while marks fail: the next round writes them first, so they
                # cannot pile up.
                self._acknowledged_through = 0
                raise

    def _drop_producer(self, timeout: float = 0.0) -> None:
        if self._producer is not None:
            dropped = close_producer(self._producer, timeout=timeout)
            if dropped:
                log.info("outbox relay: %d unacknowledged events left unpublished", dropped)
            self._producer = None

    def _count_retry(self) -> None:
        self.stats.retries += 1
        self._metrics.retries["queue_full"].inc()


def _outgoing(item: PendingOutboxEvent) -> OutgoingRecord:
    event = item.event
    return OutgoingRecord(event.topic, event.key, event.payload, event.headers)
