"""Reading topics from their beginning to their end: state changelogs and compacted tables.

A restore reads each partition up to the high watermark it had when the restore began, with its
own consumer using assign() (no group membership, no commits: the group id only names it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from txguard.kafka.clients import make_consumer

log = logging.getLogger(__name__)

# Called with (partition, key, value) for every record read; value None is a tombstone.
RecordSink = Callable[[int, bytes | None, bytes | None], None]

# A partition moments old, or one whose leader is moving, answers these until it settles.
_SETTLING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._TIMED_OUT,
    }
)


class TopicReadError(RuntimeError):
    """Partitions could not be read to their end in time."""


def read_to_end(
    bootstrap: str,
    topic: str,
    partitions: Sequence[int],
    sink: RecordSink,
    *,
    group_id: str,
    timeout_seconds: float = 60.0,
) -> None:
    """Feed every record of `partitions`, oldest first per partition, to `sink`."""
    if not partitions:
        return
    overrides: dict[str, Any] = {"enable.partition.eof": True}
    consumer = make_consumer(
        bootstrap, group_id=group_id, client_id=f"{group_id}.read", **overrides
    )
    deadline = time.monotonic() + timeout_seconds
    try:
        ends: dict[int, int] = {}
        for partition in partitions:
            low, high = end_offsets(consumer, TopicPartition(topic, partition), deadline)
            if high > low:
                ends[partition] = high
        if ends:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        while ends:
            if time.monotonic() > deadline:
                raise TopicReadError(
                    f"{topic} partitions {sorted(ends)} not read to their end within "
                    f"{timeout_seconds:.0f} s"
                )
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                source = message.partition()
                if source is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        ends.pop(source, None)
                        continue
                    if error.fatal():
                        raise KafkaException(error)
                    log.warning("reading %s: consumer error %s", topic, error)
                    continue
                offset = message.offset()
                if offset is None or offset >= ends.get(source, 0):
                    continue  # Written after the restore began: the live consumer will see it.
                sink(source, message.key(), message.value())
                if offset + 1 >= ends[source]:
                    ends.pop(source, None)
    finally:
        consumer.close()


def end_offsets(consumer: Consumer, partition: TopicPartition, deadline: float) -> tuple[int, int]:
    """Low and high watermark, retried while the partition settles (e.g. just created)."""
    while True:
        wait = max(0.1, min(10.0, deadline - time.monotonic()))
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=wait)
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            settling = isinstance(error, KafkaError) and (
                error.retriable() or error.code() in _SETTLING
            )
            if not settling or time.monotonic() >= deadline:
                raise TopicReadError(
                    f"cannot read the end of {partition.topic}[{partition.partition}]: {exc}"
                ) from exc
            time.sleep(0.1)
