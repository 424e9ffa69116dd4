"""poll_batch against a real broker: a rebalance while a batch is gathered."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from tests.support import wait_until
from txguard.bench.kafka_io import create_topic
from txguard.kafka.clients import make_consumer, make_producer
from txguard.kafka.consumer_loop import close_consumer, poll_batch, subscribe

if TYPE_CHECKING:
    from tests.conftest import KafkaBroker

pytestmark = pytest.mark.integration

RECORDS_PER_PARTITION = 20


def _fill(bootstrap: str, topic: str, partitions: int) -> None:
    producer = make_producer(bootstrap, client_id="test-consumer-loop")
    for partition in range(partitions):
        for index in range(RECORDS_PER_PARTITION):
            producer.produce(topic, f"{partition}-{index}".encode(), partition=partition)
    assert producer.flush(30) == 0


def _by_partition(records: list[Message]) -> dict[int, list[int]]:
    offsets: dict[int, list[int]] = {}
    for record in records:
        offsets.setdefault(record.partition() or 0, []).append(record.offset() or 0)
    return offsets


def test_a_batch_holds_no_record_of_a_partition_revoked_while_it_was_gathered(
    kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = f"test-consumer-loop-{uuid.uuid4().hex}"
    create_topic(bootstrap, topic, 2)
    group = f"test-consumer-loop-{uuid.uuid4().hex}"
    revoked: list[TopicPartition] = []
    # Heartbeats every 0.5 s: the first consumer learns of the rebalance soon after the join.
    faster_heartbeat: dict[str, Any] = {"heartbeat.interval.ms": 500}
    first = make_consumer(bootstrap, group_id=group, client_id="test-first", **faster_heartbeat)
    joined = threading.Event()
    done = threading.Event()
    taken_over: list[Message] = []

    def run_second() -> None:
        second = make_consumer(bootstrap, group_id=group, client_id="test-second")
        try:
            second.subscribe([topic])
            joined.set()
            while not done.is_set():
                records = second.consume(num_messages=100, timeout=0.2)
                taken_over.extend(record for record in records if record.error() is None)
        finally:
            second.close()

    thread = threading.Thread(target=run_second, daemon=True)

    try:
        subscription = subscribe(
            first, [topic], on_revoke=lambda _c, partitions: revoked.extend(partitions)
        )
        # Both partitions assigned (the topic is empty, nothing is consumed yet) ...
        wait_until(lambda: not first.consume(timeout=0.2) and len(first.assignment()) == 2)
        # ... then records arrive, and the consumer fetches them ahead of the next batch.
        _fill(bootstrap, topic, 2)
        time.sleep(2.0)
        thread.start()
        assert joined.wait(30)
        # The first consume() returns every fetched record; the group rebalances while the
        # batch lingers for more, and one partition goes to the second consumer.
        with caplog.at_level(logging.INFO, logger="txguard.kafka.consumer_loop"):
            batch = poll_batch(first, 1_000, 5.0, linger=15.0, subscription=subscription)
        assert len(revoked) == 1, f"no partition was revoked while the batch lingered: {revoked}"
        gone = revoked[0].partition
        kept = 1 - gone
        assert _by_partition(batch) == {kept: list(range(RECORDS_PER_PARTITION))}
        # The revoked partition's records were in hand when it went, and were dropped there.
        assert f"dropped {RECORDS_PER_PARTITION} records" in caplog.text
        # Nothing was committed: the new owner reads the revoked partition from its start.
        wait_until(lambda: len(taken_over) >= RECORDS_PER_PARTITION, timeout=60)
        assert _by_partition(taken_over) == {gone: list(range(RECORDS_PER_PARTITION))}
    finally:
        done.set()
        if thread.is_alive():
            thread.join(30)
        first.close()


def _member_with_partitions(
    bootstrap: str, on_revoke: Callable[[Consumer, list[TopicPartition]], None]
) -> Consumer:
    """A group member that owns the partitions of a new topic."""
    topic = f"test-consumer-close-{uuid.uuid4().hex}"
    create_topic(bootstrap, topic, 2)
    consumer = make_consumer(
        bootstrap, group_id=f"test-consumer-close-{uuid.uuid4().hex}", client_id="test-close"
    )
    consumer.subscribe([topic], on_revoke=on_revoke)

    def assigned() -> bool:
        consumer.consume(num_messages=1, timeout=0.2)
        return len(consumer.assignment()) == 2

    wait_until(assigned, timeout=60)
    return consumer


def test_close_consumer_gives_up_after_its_timeout_when_close_blocks(
    kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    def wait_for_release(_consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        release.wait(60)

    consumer = _member_with_partitions(kafka_broker.bootstrap, wait_for_release)
    try:
        with caplog.at_level(logging.WARNING, logger="txguard.kafka.consumer_loop"):
            assert close_consumer(consumer, what="test", timeout=0.5) is False
        assert "test: Kafka consumer not closed within 0.5 s" in caplog.text
    finally:
        release.set()


def test_close_consumer_closes_and_raises_what_close_raised(kafka_broker: KafkaBroker) -> None:
    revoked: list[TopicPartition] = []
    closed = _member_with_partitions(
        kafka_broker.bootstrap, lambda _consumer, partitions: revoked.extend(partitions)
    )
    assert close_consumer(closed, what="test") is True
    assert len(revoked) == 2, "close() ran the revoke callback: the group was left"

    def fail(_consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        raise ValueError("revoke callback failed")

    failing = _member_with_partitions(kafka_broker.bootstrap, fail)
    with pytest.raises(ValueError, match="revoke callback failed"):
        close_consumer(failing, what="test")
