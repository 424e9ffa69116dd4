"""The scaling benchmark's input gate on the real broker: the copied transactions stay unreadable
to read_committed consumers until released, then arrive whole, in their partitions, in order."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, TopicPartition

from txguard.bench.gated_input import GatedInput
from txguard.bench.workload import namespaced
from txguard.config import Settings
from txguard.kafka.clients import make_producer
from txguard.kafka.topics import ensure_topics

if TYPE_CHECKING:
    from tests.conftest import KafkaBroker

# (partition, key, value) of the source's transactions topic, in produce order.
RECORDS = [(index % 3, f"acct-{index % 5}".encode(), f"tx-{index}".encode()) for index in range(60)]


def _read_committed(bootstrap: str, topic: str, *, seconds: float) -> list[tuple[int, bytes]]:
    """(partition, value) of everything a read_committed consumer gets from `topic` in `seconds`
    (partition by partition, in offset order), with each record's `n` header checked."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"gate-test-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        received: list[tuple[int, bytes]] = []
        for message in consumer.consume(num_messages=1_000, timeout=seconds):
            if message.error() is None:
                assert message.headers() == [("n", message.value())]
                received.append((message.partition() or 0, message.value() or b""))
        return received
    finally:
        consumer.close()


def _source_and_target(
    bootstrap: str, env: dict[str, str], records: list[tuple[int, bytes, bytes]]
) -> tuple[Settings, Settings]:
    """A source namespace whose transactions topic holds `records` and whose terminal table holds
    one entry, and an empty target namespace."""
    base = Settings.from_env(env)
    source = namespaced(base, f"gate-source-{uuid.uuid4().hex[:8]}")
    target = namespaced(base, f"gate-target-{uuid.uuid4().hex[:8]}")
    ensure_topics(bootstrap, source)
    producer = make_producer(bootstrap, client_id="gate-test")
    for partition, key, value in records:
        producer.produce(
            source.topics.transactions, value, key, partition=partition, headers=[("n", value)]
        )
    producer.produce(
        source.topics.terminal_risk, b"table", b"terminal-1", partition=1, headers=[("n", b"table")]
    )
    assert producer.flush(30) == 0
    return source, target


def test_transactions_are_held_back_until_released_and_the_table_is_not(
    kafka_broker: KafkaBroker, txguard_env: dict[str, str]
) -> None:
    source, target = _source_and_target(kafka_broker.bootstrap, txguard_env, RECORDS)
    with GatedInput(kafka_broker.bootstrap, source, target) as gate:
        assert gate.fill() == len(RECORDS)
        # The table is readable at once; the transactions are not.
        assert _read_committed(kafka_broker.bootstrap, target.topics.terminal_risk, seconds=3) == [
            (1, b"table")
        ]
        assert _read_committed(kafka_broker.bootstrap, target.topics.transactions, seconds=3) == []
        gate.release()

    received = _read_committed(kafka_broker.bootstrap, target.topics.transactions, seconds=5)
    for partition in range(3):
        sent = [value for p, _key, value in RECORDS if p == partition]
        assert [value for p, value in received if p == partition] == sent


def test_leaving_without_release_discards_the_held_back_copy(
    kafka_broker: KafkaBroker, txguard_env: dict[str, str]
) -> None:
    source, target = _source_and_target(kafka_broker.bootstrap, txguard_env, RECORDS[:10])
    with GatedInput(kafka_broker.bootstrap, source, target) as gate:
        assert gate.fill() == 10
    assert _read_committed(kafka_broker.bootstrap, target.topics.transactions, seconds=3) == []
