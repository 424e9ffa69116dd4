"""Helpers shared by txguard's batch loops (relay, detector, applier): one way to do each thing.

- `poll_batch`: one batch `consume()`, with consumer error events logged or raised;
- `next_offsets` / `commit_offsets` / `CommitReporter`: asynchronous commit of a processed batch,
  with failures logged and counted from the `on_commit` callback;
- `UncommittedOffsets`: processed offsets held for a loop that commits less often than per batch;
- `produce_with_backpressure`: `produce()` that polls and retries while the local queue is full
  (`produce_all` for many records);
- `wait_for_deliveries` / `close_producer`: flush with a bounded wait once the loop is stopping;
- `close_consumer`: close (leave the group) with a bounded wait, broker or no broker;
- `wait_for_kafka`: the bootstrap address and topics, waiting while the cluster is unreachable;
- `Backoff`: exponential back-off that a stop event interrupts;
- `subscribe` / `batch_processed`: with `poll_batch(..., metrics=...)`, a loop's consumer metrics
  (records, batch duration, lag per partition, rebalances) at a cost per batch, not per record;
  with `poll_batch(..., subscription=subscribe(...))`, no record of a partition revoked while the
  batch was gathered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, cast

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from txguard.config import Settings
from txguard.kafka.clients import KafkaNotRunning, resolve_bootstrap
from txguard.kafka.serde import Headers
from txguard.kafka.topic_identity import TopicIdentity
from txguard.kafka.topics import TopicError, ensure_topics
from txguard.observability.metrics import ConsumerMetrics, PartitionSpan

log = logging.getLogger(__name__)

# The consumer's positions and watermarks are read at most this often for the lag metrics.
LAG_REFRESH_SECONDS = 0.5
# A stopping loop waits at most this long for its consumer to close (`close_consumer`).
CLOSE_SECONDS = 10.0
RebalanceCallback = Callable[[Consumer, list[TopicPartition]], None]
# What produce() takes as headers; per-record casts name it (a spelt-out type is rebuilt per call).
_ProduceHeaders = list[tuple[str, str | bytes | None]]

# Commit rejected because the group moved on: the partition's next owner resumes from the last
# committed offset and its restored dedup state drops what was already handled.
_GROUP_MOVED_ON = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.STALE_MEMBER_EPOCH,
        KafkaError._ASSIGNMENT_LOST,
    }
)


class OffsetCommitError(RuntimeError):
    """Offsets could not be committed: a non-retriable error, or retries ran out."""

    def __init__(self, message: str, error: KafkaError | None = None) -> None:
        super().__init__(message)
        self.error = error


class DeliveryTimeout(RuntimeError):
    """Records were still undelivered when the bounded wait (on stop) ran out."""

    def __init__(self, undelivered: int, waited_seconds: float) -> None:
        super().__init__(f"{undelivered} records undelivered after {waited_seconds:.1f} s")
        self.undelivered = undelivered


class OutgoingRecord(NamedTuple):
    """A record to produce; partition -1 lets the partitioner choose from the key.

    A named tuple: hot loops create one per record, and a tuple is the cheapest to create.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers | list[tuple[str, bytes]] = ()
    partition: int = -1


class FailedDeliveries:
    """A delivery callback that keeps the error of every failed delivery."""

    def __init__(self) -> None:
        self.errors: list[KafkaError] = []

    def __call__(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self.errors.append(error)


class Backoff:
    """Exponential back-off: initial, x2 per failure, capped; `reset()` after a success."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return delay

    def sleep(self, stop: threading.Event | None = None) -> None:
        """Wait for the next delay; returns early when `stop` is set."""
        delay = self.next_delay()
        if stop is None:
            time.sleep(delay)
        else:
            stop.wait(delay)


class Subscription:
    """The partitions a subscribed consumer gave up (revoked or lost) while `poll_batch`
    gathered a batch: what `subscribe()` returns and `poll_batch(..., subscription=...)` takes."""

    def __init__(self) -> None:
        # One set per rebalance callback that gave partitions up, since the last `reset()`.
        self._given_up: list[set[tuple[str, int]]] = []
        self.retired = False

    def retire(self) -> None:
        """The loop replaces this consumer: its rebalance callbacks, should a `close()` given up
        on run them later, do nothing (the loop's state belongs to the new consumer)."""
        self.retired = True

    def record(self, partitions: Iterable[TopicPartition]) -> None:
        self._given_up.append({(p.topic, p.partition) for p in partitions})

    def reset(self) -> None:
        self._given_up.clear()

    @property
    def callbacks(self) -> int:
        """Rebalance callbacks that gave partitions up since the last `reset()`."""
        return len(self._given_up)

    def given_up_since(self, callback: int = 0) -> set[tuple[str, int]]:
        """The partitions given up by the callbacks from number `callback` on."""
        partitions: set[tuple[str, int]] = set()
        return partitions.union(*self._given_up[callback:])


def poll_batch(
    consumer: Consumer,
    max_messages: int,
    timeout: float,
    *,
    metrics: ConsumerMetrics | None = None,
    linger: float = 0.0,
    subscription: Subscription | None = None,
) -> list[Message]:
    """Up to `max_messages` records; error events are logged (transient) or raised (fatal).

    Takes what has arrived: only when nothing is there does it wait, up to `timeout`, for the
    first record. Then it waits up to `linger` for more (0: not at all), so by default the batch
    size follows the load and a record is never held back to fill a batch; a loop whose output
    costs per batch (watermarks) lingers instead.
    With `metrics`, the records become the loop's pending batch until `batch_processed()`.

    Rebalance callbacks run inside `consume()`, so partitions can be revoked or lost while a
    batch is gathered. With the consumer's `subscription`, no record of a partition given up
    that way stays in the batch: neither those in hand before the `consume()` in which it was
    given up, nor those of a partition this consumer no longer owns when the batch is complete.
    They are not this consumer's to process or commit: their next owner (or this consumer,
    when a partition came back) reads them again from the last committed offset.
    """
    if subscription is not None:
        subscription.reset()
    messages = consumer.consume(num_messages=max_messages, timeout=0)
    if not messages:
        messages = consumer.consume(num_messages=1, timeout=timeout)
    if messages and len(messages) < max_messages:
        callbacks = subscription.callbacks if subscription is not None else 0
        more = consumer.consume(num_messages=max_messages - len(messages), timeout=linger)
        if subscription is not None and subscription.callbacks > callbacks:
            messages = _without(messages, subscription.given_up_since(callbacks))
        messages += more
    if subscription is not None and subscription.callbacks:
        # Given up inside a call that also returned records: those the consumer still owns (it
        # got the partition back) are kept, the others dropped.
        owned = {(p.topic, p.partition) for p in consumer.assignment()}
        messages = _without(messages, subscription.given_up_since() - owned)
    records: list[Message] = []
    for message in messages:
        error = message.error()
        if error is None:
            records.append(message)
        elif error.fatal():
            raise KafkaException(error)
        elif error.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error (librdkafka retries it): %s", error)
    if metrics is not None:
        metrics.polled()
        if records:
            metrics.batch_received(partition_spans(records))
        else:
            refresh_lag(consumer, metrics)
    return records


def _without(messages: list[Message], given_up: set[tuple[str, int]]) -> list[Message]:
    """The messages not of a partition in `given_up`; the dropped ones are logged."""
    if not given_up:
        return messages
    kept = [m for m in messages if (m.topic(), m.partition()) not in given_up]
    if len(kept) < len(messages):
        log.info(
            "dropped %d records of partitions given up while the batch was gathered: %s; "
            "they are read again from the last committed offset",
            len(messages) - len(kept),
            ", ".join(f"{topic}[{partition}]" for topic, partition in sorted(given_up)),
        )
    return kept


def batch_processed(consumer: Consumer, metrics: ConsumerMetrics) -> None:
    """The pending batch is processed and its commit requested: count it, update the lag."""
    metrics.batch_processed()
    refresh_lag(consumer, metrics)


def partition_spans(records: Sequence[Message]) -> list[PartitionSpan]:
    """First and last record of each partition in a batch, in one pass: a batch comes in runs
    of one partition's records, and within a run a record costs two calls and two comparisons."""
    # (topic, partition) -> [first record, last record, records]
    seen: dict[tuple[str, int], list[Any]] = {}
    topic: str | None = None
    partition: int | None = None
    run: list[Any] = []
    for message in records:
        record_topic, record_partition = message.topic(), message.partition()
        if record_partition == partition and record_topic == topic:
            run[1] = message
            run[2] += 1
            continue
        topic, partition = record_topic, record_partition
        key = (cast(str, topic), cast(int, partition))
        run = seen.get(key) or seen.setdefault(key, [message, message, 0])
        run[1] = message
        run[2] += 1
    return [
        PartitionSpan(
            topic=key[0],
            partition=key[1],
            first_offset=cast(int, head.offset()),
            first_timestamp=_timestamp_seconds(head),
            last_offset=cast(int, tail.offset()),
            last_timestamp=_timestamp_seconds(tail),
            records=count,
        )
        for key, (head, tail, count) in seen.items()
    ]


def _timestamp_seconds(message: Message) -> float | None:
    kind, millis = message.timestamp()
    return None if kind == TIMESTAMP_NOT_AVAILABLE else millis / 1000.0


def refresh_lag(consumer: Consumer, metrics: ConsumerMetrics, *, force: bool = False) -> None:
    """Read the assignment's positions and cached high watermarks (no broker round trip)."""
    now = time.monotonic()
    if not force and now < metrics.next_lag_refresh:
        return
    metrics.next_lag_refresh = now + LAG_REFRESH_SECONDS
    try:
        assignment = consumer.assignment()
        metrics.assignment_size(len(assignment))
        watermarks: dict[tuple[str, int], tuple[int | None, int | None]] = {}
        for position in consumer.position(assignment) if assignment else []:
            try:
                _low, high = consumer.get_watermark_offsets(position, cached=True)
            except KafkaException:
                high = None
            watermarks[(position.topic, position.partition)] = (position.offset, high)
    except (KafkaException, RuntimeError) as exc:
        # A closed or failing consumer: the lag is simply not refreshed this time.
        log.debug("lag refresh skipped: %s", exc)
        return
    metrics.lag.positions(watermarks)


def subscribe(
    consumer: Consumer,
    topics: Sequence[str],
    *,
    metrics: ConsumerMetrics | None = None,
    on_assign: RebalanceCallback | None = None,
    on_revoke: RebalanceCallback | None = None,
    on_lost: RebalanceCallback | None = None,
    identity: TopicIdentity | None = None,
    what: str = "consumer",
) -> Subscription:
    """`consumer.subscribe()` with rebalances counted and revoked partitions' lag removed.

    Without `on_lost`, lost partitions go to `on_revoke`, as librdkafka itself does. The returned
    `Subscription` is for `poll_batch`, which then drops records of partitions given up while it
    gathered a batch; once `retire()`d, the callbacks do nothing. With the loop's `identity`, an
    assigned partition whose committed offset counts in a topic since deleted and created again
    starts from its beginning (`TopicIdentity.start_positions`).
    """
    subscription = Subscription()

    def assigned(c: Consumer, partitions: list[TopicPartition]) -> None:
        if subscription.retired:
            return
        if identity is not None:
            start = identity.start_positions(c, partitions, what=what)
            if start is not None:
                c.incremental_assign(start)
        if metrics is not None:
            metrics.rebalanced("assigned", [(p.topic, p.partition) for p in partitions])
        if on_assign is not None:
            on_assign(c, partitions)

    def revoked(c: Consumer, partitions: list[TopicPartition]) -> None:
        if subscription.retired:
            return
        subscription.record(partitions)
        if metrics is not None:
            metrics.rebalanced("revoked", [(p.topic, p.partition) for p in partitions])
        if on_revoke is not None:
            on_revoke(c, partitions)

    def lost(c: Consumer, partitions: list[TopicPartition]) -> None:
        if subscription.retired:
            return
        subscription.record(partitions)
        if metrics is not None:
            metrics.rebalanced("lost", [(p.topic, p.partition) for p in partitions])
        handler = on_lost or on_revoke
        if handler is not None:
            handler(c, partitions)

    consumer.subscribe(list(topics), on_assign=assigned, on_revoke=revoked, on_lost=lost)
    return subscription


class UncommittedOffsets:
    """The next offset to commit of each partition, for a loop that commits less often than it
    processes batches: the latest batch's offset of a partition replaces the earlier ones."""

    def __init__(self) -> None:
        self._offsets: dict[tuple[str, int], TopicPartition] = {}

    def __bool__(self) -> bool:
        return bool(self._offsets)

    def add(self, offsets: Iterable[TopicPartition]) -> None:
        for offset in offsets:
            self._offsets[(offset.topic, offset.partition)] = offset

    def take(self) -> list[TopicPartition]:
        """Every partition's offset, forgotten here (the caller commits them)."""
        offsets = list(self._offsets.values())
        self._offsets.clear()
        return offsets

    def take_partitions(self, partitions: Iterable[TopicPartition]) -> list[TopicPartition]:
        """The offsets of `partitions` (revoked or lost), forgotten here."""
        taken = (self._offsets.pop((p.topic, p.partition), None) for p in partitions)
        return [offset for offset in taken if offset is not None]


def next_offsets(messages: Iterable[Message]) -> list[TopicPartition]:
    """The offsets to commit after a batch: last offset + 1 for each partition in it (a batch
    comes in runs of one partition's records: a new partition is looked up once per run)."""
    highest: dict[tuple[str, int], int] = {}
    topic: str | None = None
    partition: int | None = None
    key: tuple[str, int] | None = None
    for message in messages:
        record_topic, record_partition, offset = (
            message.topic(),
            message.partition(),
            message.offset(),
        )
        if record_partition != partition or record_topic != topic:
            topic, partition = record_topic, record_partition
            key = None if topic is None or partition is None else (topic, partition)
        if key is None or offset is None:
            continue
        if offset >= highest.get(key, -1):
            highest[key] = offset
    return [TopicPartition(topic, part, offset + 1) for (topic, part), offset in highest.items()]


def commit_offsets(
    consumer: Consumer,
    offsets: Sequence[TopicPartition],
    *,
    on_retry: Callable[[], None],
    identity: TopicIdentity | None = None,
) -> None:
    """Commit a processed batch's offsets asynchronously; with the loop's `identity`, each
    carries the id of the topic it counts in (`TopicIdentity.stamped`).

    A synchronous commit can block without limit while the group coordinator is unreachable, and
    with it the whole loop and its shutdown; an asynchronous one never does. Its result arrives
    through the consumer's `on_commit` callback (`CommitReporter`). A lost commit is safe: the
    next batch's commit supersedes it, and if none does, the partition's next owner reprocesses
    from the last committed offset and deduplicates.
    """
    if not offsets:
        return
    if identity is not None:
        offsets = identity.stamped(offsets)
    try:
        consumer.commit(offsets=list(offsets), asynchronous=True)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.code() == KafkaError._NO_OFFSET:
            return
        if isinstance(error, KafkaError) and error.fatal():
            raise OffsetCommitError(f"offset commit failed: {error}", error) from exc
        on_retry()
        log.warning("offset commit not sent (%s); the next batch's commit supersedes it", exc)


class CommitReporter:
    """The consumer's `on_commit` callback: logs and counts commits that failed."""

    def __init__(self, on_failure: Callable[[], None]) -> None:
        self._on_failure = on_failure

    def __call__(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = (
            error
            if error is not None
            else next((p.error for p in partitions if p.error is not None), None)
        )
        if failed is None or failed.code() == KafkaError._NO_OFFSET:
            return
        self._on_failure()
        if failed.code() in _GROUP_MOVED_ON:
            log.warning(
                "offset commit rejected (%s): the partitions' next owner will reprocess and "
                "deduplicate",
                failed,
            )
        else:
            log.warning("offset commit failed (%s); the next batch's commit supersedes it", failed)


def produce_with_backpressure(
    producer: Producer,
    record: OutgoingRecord,
    *,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    on_retry: Callable[[], None],
) -> None:
    """produce(); while librdkafka's local queue is full, serve delivery reports and try again.

    Without `on_delivery`, the producer's own `on_delivery` setting reports the delivery.
    """
    # produce() takes a list (not a tuple) of headers.
    headers = cast(
        _ProduceHeaders,
        record.headers if isinstance(record.headers, list) else list(record.headers),
    )
    # Topic, value and key by position, and only the keywords needed: produce() parses its
    # keywords for each record, which costs about as much as librdkafka's own work.
    extra: dict[str, Any] | None = None
    if record.partition >= 0 or on_delivery is not None:
        extra = {"partition": record.partition}
        if on_delivery is not None:
            extra["on_delivery"] = on_delivery
    while True:
        try:
            if extra is None:
                producer.produce(record.topic, record.value, record.key, headers=headers)
            else:
                producer.produce(record.topic, record.value, record.key, headers=headers, **extra)
            return
        except BufferError:
            on_retry()
            producer.poll(0.05)


def produce_all(
    producer: Producer, records: Sequence[OutgoingRecord], *, on_retry: Callable[[], None]
) -> None:
    """`produce_with_backpressure` for each record, delivery reported by the producer's own
    `on_delivery` setting: the usual record (partition chosen from the key, headers as a list)
    costs one produce() call and nothing else."""
    produce = producer.produce
    for record in records:
        topic, key, value, headers, partition = record
        if partition >= 0 or type(headers) is not list:
            produce_with_backpressure(producer, record, on_retry=on_retry)
            continue
        try:
            produce(topic, value, key, headers=cast(_ProduceHeaders, headers))
        except BufferError:
            # The queue is full: the slow path serves delivery reports until it has room.
            produce_with_backpressure(producer, record, on_retry=on_retry)


def wait_for_deliveries(
    producer: Producer,
    *,
    stop: threading.Event,
    stop_grace_seconds: float,
    what: str,
    warn_every_seconds: float = 10.0,
) -> None:
    """Flush until every queued record has a delivery report.

    While running, this waits as long as it takes (the broker may be down for a while; records
    must not be skipped or reordered). Once `stop` is set it waits at most `stop_grace_seconds`
    more and then raises DeliveryTimeout.
    """
    started = time.monotonic()
    stop_seen_at: float | None = None
    next_warning = started + warn_every_seconds
    while True:
        remaining = producer.flush(0.2)
        if remaining == 0:
            return
        now = time.monotonic()
        if stop.is_set():
            stop_seen_at = stop_seen_at or now
            if now - stop_seen_at >= stop_grace_seconds:
                raise DeliveryTimeout(remaining, now - started)
        if now >= next_warning:
            log.warning(
                "%s: %d records awaiting delivery for %.0f s (is the broker reachable?)",
                what,
                remaining,
                now - started,
            )
            next_warning = now + warn_every_seconds


def close_producer(producer: Producer, *, timeout: float) -> int:
    """Flush for at most `timeout`, drop what is still queued, close. Returns the dropped count.

    Dropped records were never acknowledged, so the caller has not marked or committed them:
    they are produced again by whoever runs next.
    """
    remaining = producer.flush(timeout)
    if remaining:
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        producer.flush(1.0)
    producer.close()
    return remaining


def close_consumer(consumer: Consumer, *, what: str, timeout: float = CLOSE_SECONDS) -> bool:
    """Close the consumer (last rebalance callbacks, leave the group) within `timeout` seconds.

    librdkafka's `close()` waits for the group coordinator without limit: with the broker away
    when a service stops, it blocked for minutes, and the service with it. A stopping service
    must not wait for the broker: its committed offsets are all the state there is, and a member
    that did not leave the group is dropped after `session.timeout.ms`. So `close()` runs in a
    daemon thread; if it has not returned within `timeout`, this logs a warning and returns False,
    and the process exits without it. An exception of `close()` (a rebalance callback's) is
    raised here when it returns in time.
    """
    failure: list[BaseException] = []

    def close() -> None:
        try:
            consumer.close()
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    closing = threading.Thread(target=close, name=f"{what}-close", daemon=True)
    closing.start()
    closing.join(timeout)
    if closing.is_alive():
        log.warning(
            "%s: Kafka consumer not closed within %g s (is the broker reachable?); stopping "
            "without leaving the group, which drops this member after its session timeout",
            what,
            timeout,
        )
        return False
    if failure:
        raise failure[0]
    return True


def wait_for_kafka(settings: Settings, stop: threading.Event, *, what: str) -> str | None:
    """The bootstrap address once the cluster answers and txguard's topics exist.

    Waits (with back-off) while no broker is reachable, so a service may start before Kafka.
    Returns None if `stop` is set first. A topic that cannot be created raises TopicError.
    """
    backoff = Backoff(initial=0.5, maximum=10.0)
    warned = False
    while not stop.is_set():
        try:
            bootstrap = resolve_bootstrap(settings)
            ensure_topics(bootstrap, settings, timeout=10.0)
            if warned:
                log.info("%s: Kafka is reachable at %s", what, bootstrap)
            return bootstrap
        except TopicError:
            raise
        except (KafkaNotRunning, KafkaException) as exc:
            if not warned:
                log.warning("%s: waiting for Kafka (%s)", what, exc)
                warned = True
        backoff.sleep(stop)
    return None
