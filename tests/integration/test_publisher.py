"""ConfirmedPublisher against a real broker, and against none: what `try_confirm` promises."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.conftest import free_tcp_port
from tests.support import wait_until
from txguard.config import DLQ_TOPIC
from txguard.kafka.consumer_loop import OutgoingRecord
from txguard.kafka.publisher import ConfirmedPublisher

if TYPE_CHECKING:
    from tests.conftest import KafkaBroker

pytestmark = pytest.mark.integration


def records(count: int) -> list[OutgoingRecord]:
    key = f"publisher-test-{uuid.uuid4().hex}".encode()
    return [OutgoingRecord(DLQ_TOPIC, key, b"x" * 100) for _ in range(count)]


def test_try_confirm_is_true_once_everything_sent_is_acknowledged(
    kafka_broker: KafkaBroker,
) -> None:
    publisher = ConfirmedPublisher(
        kafka_broker.bootstrap, client_id="test-publisher", on_retry=lambda: None
    )
    try:
        assert publisher.try_confirm()  # nothing sent
        publisher.send(records(50))
        assert publisher.pending == 50
        wait_until(publisher.try_confirm, timeout=30)
        assert publisher.pending == 0
    finally:
        publisher.close()


def test_try_confirm_stays_false_while_records_are_unacknowledged() -> None:
    # Nothing listens on this port: the records cannot be delivered.
    publisher = ConfirmedPublisher(
        f"127.0.0.1:{free_tcp_port()}",
        client_id="test-publisher",
        on_retry=lambda: None,
        stop_grace_seconds=0.1,
    )
    try:
        publisher.send(records(3))
        for _ in range(5):
            assert not publisher.try_confirm()
        assert publisher.pending == 3
    finally:
        publisher.close()


def test_a_full_local_queue_holds_the_sender_back_and_loses_nothing(
    kafka_broker: KafkaBroker,
) -> None:
    # A local queue of 50 records: sending 2,000 at once fills it again and again.
    retries = 0

    def retried() -> None:
        nonlocal retries
        retries += 1

    publisher = ConfirmedPublisher(
        kafka_broker.bootstrap,
        client_id="test-publisher",
        on_retry=retried,
        **{"queue.buffering.max.messages": 50},
    )
    key = f"publisher-test-{uuid.uuid4().hex}".encode()
    sent = [
        OutgoingRecord(DLQ_TOPIC, key, str(index).encode(), [("n", str(index).encode())])
        for index in range(2_000)
    ]
    consumer = Consumer(
        {"bootstrap.servers": kafka_broker.bootstrap, "group.id": f"g-{uuid.uuid4().hex}"}
    )
    try:
        partitions = consumer.list_topics(DLQ_TOPIC, timeout=10).topics[DLQ_TOPIC].partitions
        starts = [
            TopicPartition(
                DLQ_TOPIC,
                p,
                consumer.get_watermark_offsets(TopicPartition(DLQ_TOPIC, p), timeout=10)[1],
            )
            for p in partitions
        ]
        publisher.send(sent)
        assert retries > 0, "the queue was full at least once"
        wait_until(publisher.try_confirm, timeout=60)
        consumer.assign(starts)
        received: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(received) < len(sent) and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=1.0):
                if message.error() is None and message.key() == key:
                    received.append(message.value() or b"")
        assert received == [record.value for record in sent], "all of them, once, in order"
    finally:
        consumer.close()
        publisher.close()
