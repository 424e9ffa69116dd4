"""The harness's own Kafka reads: end offsets, consumer-group progress, topics read back whole.

None of this runs while a measured process works, except `OffsetWatcher`, which asks for end
offsets about twice a second: cheap next to the records being measured.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from txguard.kafka.clients import make_admin, make_consumer
from txguard.kafka.consumer_loop import OutgoingRecord, produce_with_backpressure

log = logging.getLogger(__name__)

Offsets = dict[int, int]
_ALREADY_EXISTS = KafkaError.TOPIC_ALREADY_EXISTS


class BenchKafkaError(RuntimeError):
    """A topic could not be created, read or cleaned up."""


def _reader(bootstrap: str, purpose: str, **overrides: Any) -> Consumer:
    # assign() only and no commits: the group id merely names the client.
    return make_consumer(
        bootstrap,
        group_id=f"txguard-bench-{purpose}-{uuid.uuid4().hex[:8]}",
        client_id=f"txguard-bench-{purpose}",
        **overrides,
    )


def partition_count(bootstrap: str, topic: str) -> int:
    with make_admin(bootstrap) as admin:
        found = admin.list_topics(topic, timeout=30).topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise BenchKafkaError(f"topic {topic} does not exist")
    return len(found.partitions)


def cluster_size(bootstrap: str) -> dict[str, int]:
    """Topics and partitions the cluster holds: each partition costs a co-located broker work
    (and memory) even while idle, so a crowded local broker is a different machine."""
    with make_admin(bootstrap) as admin:
        topics = admin.list_topics(timeout=30).topics
    return {
        "topics": len(topics),
        "partitions": sum(len(topic.partitions) for topic in topics.values()),
    }


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    """A plain delete-policy topic for the benchmark's own traffic (idempotent)."""
    with make_admin(bootstrap) as admin:
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=30,
        )
        for future in futures.values():
            try:
                future.result()
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() == _ALREADY_EXISTS:
                    continue
                raise BenchKafkaError(f"could not create topic {name}: {exc}") from exc
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            topic = admin.list_topics(name, timeout=10).topics.get(name)
            if topic is not None and topic.error is None and len(topic.partitions) == partitions:
                if all(p.leader >= 0 for p in topic.partitions.values()):
                    return
            time.sleep(0.1)
    raise BenchKafkaError(f"topic {name} has no leaders after 30 s")


def delete_topics(bootstrap: str, matches: Callable[[str], bool]) -> list[str]:
    """Delete every topic whose name `matches`; returns their names."""
    with make_admin(bootstrap) as admin:
        names = [name for name in admin.list_topics(timeout=30).topics if matches(name)]
        if not names:
            return []
        for name, future in admin.delete_topics(names, operation_timeout=60).items():
            try:
                future.result()
            except KafkaException as exc:
                log.warning("could not delete benchmark topic %s: %s", name, exc)
    return names


LEADERSHIP_WAIT_SECONDS = 30.0
_LEADERSHIP_ERRORS = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
}


class OffsetWatcher:
    """End offsets of a topic, asked of the broker each time (no subscription, no fetching)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._consumer = _reader(bootstrap, "watch")
        self.partitions = partition_count(bootstrap, topic)

    def ends(self) -> Offsets:
        ends: Offsets = {}
        for partition in range(self.partitions):
            ends[partition] = self._end(partition)
        return ends

    def _end(self, partition: int) -> int:
        """The partition's high watermark; a freshly created topic's leader can take a moment
        to be known everywhere, so leadership errors are retried for a while."""
        deadline = time.monotonic() + LEADERSHIP_WAIT_SECONDS
        while True:
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=10
                )
                return int(high)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                transient = isinstance(error, KafkaError) and error.code() in _LEADERSHIP_ERRORS
                if not transient or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def records_since(self, baseline: Offsets) -> int:
        return sum(end - baseline.get(p, 0) for p, end in self.ends().items())

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> OffsetWatcher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def end_offsets(bootstrap: str, topic: str) -> Offsets:
    with OffsetWatcher(bootstrap, topic) as watcher:
        return watcher.ends()


# The group's coordinator is moving or loading (a young broker): ask again later.
_COORDINATOR_NOT_READY = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    }
)


def group_lag(bootstrap: str, group: str, topics: Sequence[str]) -> int | None:
    """Records of `topics` the consumer group has not committed yet (all of them if none);
    None while the group's coordinator cannot answer yet."""
    consumer = make_consumer(bootstrap, group_id=group, client_id="txguard-bench-lag")
    try:
        lag = 0
        for topic in topics:
            partitions = [
                TopicPartition(topic, p) for p in range(partition_count(bootstrap, topic))
            ]
            try:
                committed = consumer.committed(partitions, timeout=30)
            except KafkaException as exc:
                if exc.args[0].code() in _COORDINATOR_NOT_READY:
                    log.info("group %s: coordinator not ready (%s)", group, exc.args[0])
                    return None
                raise
            for position in committed:
                low, high = consumer.get_watermark_offsets(position, timeout=10)
                start = position.offset if position.offset >= 0 else low
                lag += max(0, high - start)
        return lag
    finally:
        consumer.close()


@dataclass(frozen=True, slots=True)
class TopicRecord:
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes | None


def read_from(
    bootstrap: str, topic: str, start: Offsets, *, timeout_seconds: float = 300.0
) -> Iterator[TopicRecord]:
    """Every record of `topic` from `start` (per partition; 0 if absent) to its current end."""
    for message in read_messages(bootstrap, topic, start, timeout_seconds=timeout_seconds):
        partition, offset = message.partition(), message.offset()
        assert partition is not None and offset is not None
        yield TopicRecord(partition, offset, message.timestamp()[1], message.value())


def read_messages(
    bootstrap: str, topic: str, start: Offsets, *, timeout_seconds: float = 300.0
) -> Iterator[Message]:
    """`read_from`, as the consumer's messages (keys and headers too)."""
    consumer = _reader(bootstrap, "read", **{"enable.partition.eof": True})
    try:
        ends: Offsets = {}
        for partition in range(partition_count(bootstrap, topic)):
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10
            )
            if high > start.get(partition, 0):
                ends[partition] = int(high)
        if not ends:
            return
        consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in ends])
        deadline = time.monotonic() + timeout_seconds
        while ends:
            if time.monotonic() > deadline:
                raise BenchKafkaError(f"{topic} not read to its end in {timeout_seconds:.0f} s")
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                if _in_range(message, ends):
                    yield message
    finally:
        consumer.close()


def copy_topic(bootstrap: str, source: str, producer: Producer, target: str) -> int:
    """Produce every record of `source` to the same partition of `target`, with its key and
    headers; returns how many. The caller flushes (or commits) `producer`."""
    copied = 0
    for message in read_messages(bootstrap, source, {}):
        partition = message.partition()
        assert partition is not None
        # Headers as consumed: a list of (name, bytes) pairs.
        headers = cast(list[tuple[str, bytes]], message.headers() or [])
        record = OutgoingRecord(target, message.key(), message.value(), headers, partition)
        produce_with_backpressure(producer, record, on_retry=_no_count)
        copied += 1
    return copied


def _no_count() -> None:
    """A full local queue while copying is only waited out."""


def _in_range(message: Message, ends: Offsets) -> bool:
    """Whether `message` is a record before its partition's end; a partition's end (or EOF)
    removes it from `ends`."""
    partition = message.partition()
    if partition is None:
        return False
    error = message.error()
    if error is not None:
        if error.code() == KafkaError._PARTITION_EOF:
            ends.pop(partition, None)
        elif error.fatal():
            raise KafkaException(error)
        return False
    offset = message.offset()
    if offset is None or partition not in ends or offset >= ends[partition]:
        return False
    if offset + 1 >= ends[partition]:
        ends.pop(partition, None)
    return True
