"""What confluent-kafka itself can do on this broker and these partitions, with txguard's client
settings: produce N records of transaction size, and a consume -> produce passthrough that
does nothing else (the detector's I/O without its work)."""

from __future__ import annotations

import time
from itertools import cycle, islice
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from txguard.bench.kafka_io import BenchKafkaError, create_topic, partition_count
from txguard.bench.machine import own_usage
from txguard.bench.stats import rate
from txguard.kafka.clients import make_consumer, make_producer
from txguard.kafka.consumer_loop import (
    OutgoingRecord,
    commit_offsets,
    next_offsets,
    poll_batch,
    subscribe,
)
from txguard.replay.events import HOUR_US, ReplayTopics, replay_records
from txguard.simulate.handbook import SimulationConfig, simulate

# Distinct payloads cycled through: enough that no producer batch repeats one (compression
# then sees what real traffic gives it).
DISTINCT_RECORDS = 50_000


def transaction_payloads(count: int) -> list[OutgoingRecord]:
    """`count` real encoded TransactionCreated records (key = account, the txguard headers)."""
    config = SimulationConfig(customers=2_000, terminals=4_000, days=max(2, count // 3_800 + 1))
    topics = ReplayTopics("t", "l", 1, 1)
    records: list[OutgoingRecord] = []
    for batch in replay_records(simulate(config), topics, label_delay_us=HOUR_US):
        records.extend(r for r in batch if r.topic == "t" and r.partition == -1)
        if len(records) >= count:
            break
    return records[:count]


class _Deliveries:
    def __init__(self) -> None:
        self.delivered = 0
        self.errors: list[KafkaError] = []
        self.last_at = 0.0

    def __call__(self, error: KafkaError | None, _message: Message) -> None:
        if error is None:
            self.delivered += 1
            self.last_at = time.perf_counter()
        else:
            self.errors.append(error)


def _no_op() -> None:
    return None


def _produce(
    producer: Producer,
    topic: str,
    key: bytes | str | None,
    value: bytes | str | None,
    headers: Any,
    on_delivery: _Deliveries,
) -> None:
    """`produce()` straight, serving delivery reports while librdkafka's queue is full."""
    while True:
        try:
            producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.01)


def produce_ceiling(bootstrap: str, topic: str, records: int, partitions: int) -> dict[str, Any]:
    """Produce `records` transactions as fast as the idempotent producer takes them."""
    create_topic(bootstrap, topic, partitions)
    payloads = [
        (p.key, p.value, list(p.headers))
        for p in transaction_payloads(min(records, DISTINCT_RECORDS))
    ]
    size = sum(len(value or b"") for _, value, _ in payloads) / len(payloads)
    producer = make_producer(bootstrap, client_id="txguard-bench-ceiling")
    deliveries = _Deliveries()
    cpu_before = own_usage().cpu_seconds
    started = time.perf_counter()
    for key, value, headers in islice(cycle(payloads), records):
        _produce(producer, topic, key, value, headers, deliveries)
    remaining = producer.flush(300)
    seconds = time.perf_counter() - started
    cpu = own_usage().cpu_seconds - cpu_before
    if remaining or deliveries.errors or deliveries.delivered != records:
        raise BenchKafkaError(
            f"ceiling produce: {deliveries.delivered} of {records} delivered, "
            f"errors {deliveries.errors[:3]}"
        )
    return {
        "records": records,
        "value_bytes_mean": round(size, 1),
        "seconds": round(seconds, 2),
        "throughput_per_s": rate(records, seconds),
        "mib_per_s": round(records * size / seconds / 2**20, 2),
        "cpu_percent": round(100 * cpu / seconds, 1),
        "cpu_us_per_record": round(cpu * 1e6 / records, 1),
    }


def passthrough_ceiling(
    bootstrap: str, source: str, target: str, records: int, *, batch_size: int
) -> dict[str, Any]:
    """Consume `source` in batches of `batch_size` and produce each record unchanged to `target`,
    committing each batch's offsets as the detector does; timed from the first record consumed
    to the last delivery acknowledged."""
    create_topic(bootstrap, target, partition_count(bootstrap, source))
    consumer = make_consumer(
        bootstrap,
        group_id=f"{target}-passthrough",
        client_id="txguard-bench-passthrough",
    )
    producer = make_producer(bootstrap, client_id="txguard-bench-passthrough")
    deliveries = _Deliveries()
    subscription = subscribe(consumer, [source])
    consumed = 0
    started: float | None = None
    cpu_before = 0.0
    deadline = time.monotonic() + 600
    try:
        while consumed < records:
            if time.monotonic() > deadline:
                raise BenchKafkaError(f"passthrough: {consumed} of {records} after 600 s")
            batch = poll_batch(consumer, batch_size, 0.02, subscription=subscription)
            if not batch:
                producer.poll(0)
                continue
            if started is None:
                started = time.perf_counter()
                cpu_before = own_usage().cpu_seconds
            for message in batch:
                _produce(
                    producer,
                    target,
                    message.key(),
                    message.value(),
                    message.headers(),
                    deliveries,
                )
            producer.poll(0)
            commit_offsets(consumer, next_offsets(batch), on_retry=_no_op)
            consumed += len(batch)
        remaining = producer.flush(300)
    finally:
        consumer.close()
    if started is None:
        raise BenchKafkaError("passthrough: nothing consumed")
    seconds = deliveries.last_at - started
    cpu = own_usage().cpu_seconds - cpu_before
    if remaining or deliveries.errors or deliveries.delivered != consumed:
        raise BenchKafkaError(
            f"passthrough: {deliveries.delivered} of {consumed} delivered, "
            f"errors {deliveries.errors[:3]}"
        )
    return {
        "records": consumed,
        "batch_size": batch_size,
        "seconds": round(seconds, 2),
        "throughput_per_s": rate(consumed, seconds),
        "cpu_percent": round(100 * cpu / seconds, 1) if seconds > 0 else 0.0,
        "cpu_us_per_record": round(cpu * 1e6 / consumed, 1),
    }
