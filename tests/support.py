"""Helpers shared by the integration tests: polling, services on threads, stored-row builders."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import NewPartitions

from txguard.clock import now_us
from txguard.config import TRANSACTIONS_TOPIC, Settings
from txguard.kafka.clients import make_admin, make_consumer
from txguard.kafka.serde import encode_transaction_created
from txguard.kafka.topics import ensure_topics, topic_specs
from txguard.schema.ids import new_random_id
from txguard.schema.v1.events_pb2 import TransactionCreated
from txguard.schema.v1.transaction_pb2 import Transaction, TransactionStatus
from txguard.store.interface import NewTransaction, OutboxEvent


def delete_topics(bootstrap: str, names: list[str]) -> None:
    """Delete the topics (those that exist) and wait until the cluster no longer lists them."""
    with make_admin(bootstrap, client_id="test-delete-topics") as admin:
        futures = admin.delete_topics(names, operation_timeout=30)
        for future in futures.values():
            with contextlib.suppress(KafkaException):
                future.result()
        wait_until(lambda: not set(names) & set(admin.list_topics(timeout=10).topics))


def delete_namespace_topics(settings: Settings) -> None:
    """Delete every topic of the settings' namespace (a test's own pipeline)."""
    assert settings.kafka_bootstrap is not None
    delete_topics(settings.kafka_bootstrap, [spec.name for spec in topic_specs(settings)])


def recreate_topic(settings: Settings, name: str) -> None:
    """Delete a topic of the settings' namespace and create it again, empty, with its spec."""
    assert settings.kafka_bootstrap is not None
    delete_topics(settings.kafka_bootstrap, [name])
    assert ensure_topics(settings.kafka_bootstrap, settings) == [name]


def add_partitions(bootstrap: str, topic: str, total: int) -> None:
    """Give `topic` `total` partitions (kafka-topics --alter --partitions), and wait for it."""
    with make_admin(bootstrap, client_id="test-add-partitions") as admin:
        for future in admin.create_partitions([NewPartitions(topic, total)]).values():
            future.result(30)
        wait_until(
            lambda: len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == total
        )


def run_adding_partitions(
    run: Callable[[threading.Event], None],
    ready: Callable[[], bool],
    bootstrap: str,
    topic: str,
    total: int,
    timeout: float = 60.0,
) -> BaseException | None:
    """Run `run(stop)` in this thread and give `topic` `total` partitions once `ready()`; the
    error that ended the run, or None when it ran until stopped after `timeout` seconds."""
    stop = threading.Event()

    def add_when_ready() -> None:
        wait_until(ready, timeout)
        add_partitions(bootstrap, topic, total)

    adder = threading.Thread(target=add_when_ready)
    adder.start()
    safety = threading.Timer(timeout, stop.set)
    safety.start()
    try:
        run(stop)
    except BaseException as exc:
        return exc
    finally:
        safety.cancel()
        adder.join()
    return None


def recreate_while_paused(
    consumer: Consumer, settings: Settings, topic: str, refill: Callable[[], object]
) -> None:
    """With every partition of `consumer` paused, delete `topic` and create it again, and let
    `refill` write to the new topic: when the consumer fetches again, the new topic has grown
    past its old position. A consumer going on from there would never read the records below."""
    consumer.pause(consumer.assignment())
    recreate_topic(settings, topic)
    refill()
    consumer.resume(consumer.assignment())


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition of `topic` (absent: none committed)."""
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, p) for p in range(partitions)]
    )
    with make_admin(bootstrap, client_id="test-committed-offsets") as admin:
        result = admin.list_consumer_group_offsets([request], request_timeout=10)[group].result(30)
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.offset >= 0}


def start_group_at_end(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """Commit the end of every partition of `topic` for `group`, and return those offsets: its
    first member reads only what is written from now on, not what earlier tests left there."""
    consumer = make_consumer(bootstrap, group_id=group, client_id="test-start-at-end")
    wanted = [TopicPartition(topic, p) for p in range(partitions)]
    deadline = time.monotonic() + 60
    ends: list[TopicPartition] = []
    try:
        while True:
            # A broker just started may have neither partition leaders nor a group coordinator.
            try:
                ends = [
                    TopicPartition(
                        topic, tp.partition, consumer.get_watermark_offsets(tp, timeout=10)[1]
                    )
                    for tp in wanted
                ]
                consumer.commit(offsets=ends, asynchronous=False)
                committed = consumer.committed(wanted, timeout=10)
                if [tp.offset for tp in committed] == [tp.offset for tp in ends]:
                    return {tp.partition: tp.offset for tp in ends}
            except KafkaException as exc:
                assert time.monotonic() < deadline, exc
            assert time.monotonic() < deadline, f"{group} did not take the offsets {ends}"
            time.sleep(0.2)
    finally:
        consumer.close()


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


class OtherProtocolMember:
    """A member of `group` whose only assignment strategy (roundrobin) txguard's consumers
    (cooperative-sticky) do not speak: while it keeps its membership, they cannot join."""

    def __init__(self, bootstrap: str, group: str, topics: list[str]) -> None:
        roundrobin: dict[str, Any] = {"partition.assignment.strategy": "roundrobin"}
        self._consumer = make_consumer(
            bootstrap, group_id=group, client_id="test-other-protocol", **roundrobin
        )
        self._consumer.subscribe(topics)
        wait_until(lambda: bool(self._consume() or self._consumer.assignment()))

    def hold_until(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        """Keep the membership (consume) until `condition` holds."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            self._consume()

    def leave(self) -> None:
        self._consumer.close()

    def _consume(self) -> bool:
        return bool(self._consumer.consume(num_messages=100, timeout=0.2))


@contextmanager
def running_in_thread(run: Callable[[threading.Event], None], name: str) -> Iterator[None]:
    """`run(stop)` on a thread; on exit it is stopped, joined, and its error (if any) raised."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=name)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive(), f"{name} did not stop within 60 s"
    if errors:
        raise errors[0]


def new_transaction(account_id: str, amount_minor: int = 1_000) -> NewTransaction:
    """A pending transaction with its outbox event, as the API would store it."""
    now = now_us()
    tx = Transaction(
        transaction_id=new_random_id(),
        client_id="test-client",
        idempotency_key=new_random_id(),
        account_id=account_id,
        amount_minor=amount_minor,
        currency="EUR",
        status=TransactionStatus.TRANSACTION_STATUS_PENDING,
    )
    tx.occurred_at.FromMicroseconds(now)
    tx.accepted_at.FromMicroseconds(now)
    event = TransactionCreated(event_id=new_random_id(), transaction=tx)
    encoded = encode_transaction_created(event)
    return NewTransaction(
        client_id=tx.client_id,
        idempotency_key=tx.idempotency_key,
        request_fingerprint=b"fp",
        transaction=tx,
        outbox_event=OutboxEvent(
            event_id=event.event_id,
            topic=TRANSACTIONS_TOPIC,
            key=encoded.key,
            payload=encoded.value,
            headers=encoded.headers,
        ),
    )


# `python -c` source that rings the outbox bell of the store at argv[1]: a commit of another
# process, as the relay hears it.
RING_FROM_ANOTHER_PROCESS = """
import sys
from pathlib import Path
from txguard.store.outbox_bell import OutboxBell
OutboxBell(Path(sys.argv[1])).ring()
"""
