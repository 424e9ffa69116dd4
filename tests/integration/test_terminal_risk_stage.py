"""A terminal-risk stage against a real broker: a consumer kept out of its group is replaced; an
input topic created again is read from its start; partitions added to the topics a stage depends
on are followed."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.support import (
    OtherProtocolMember,
    add_partitions,
    new_transaction,
    recreate_while_paused,
    run_adding_partitions,
    running_in_thread,
    wait_until,
)
from txguard.config import Settings
from txguard.fraud.terminal_risk import TerminalEventRekeyer, TerminalTableBuilder
from txguard.kafka import serde
from txguard.kafka.clients import make_consumer, make_producer
from txguard.kafka.topics import TopicError
from txguard.schema.v1.events_pb2 import TransactionCreated
from txguard.schema.v1.terminal_risk_pb2 import TerminalEvent

if TYPE_CHECKING:
    from tests.conftest import KafkaBroker

pytestmark = pytest.mark.integration


def test_a_stage_kept_out_of_its_group_is_replaced_and_consumes_once_let_in(
    kafka_broker: KafkaBroker, txguard_env: dict[str, str]
) -> None:
    """A member of the stage's group with an assignment strategy the stage does not speak keeps
    the stage's consumer from joining while the cluster answers; the stage replaces its consumer,
    and consumes once the other member has left."""
    settings = Settings.from_env(txguard_env)
    stage = TerminalEventRekeyer(settings)
    stage.group_stall_seconds = 3.0
    blocker = OtherProtocolMember(
        kafka_broker.bootstrap, stage.group, [settings.topics.transactions, settings.topics.labels]
    )
    producer = make_producer(kafka_broker.bootstrap, client_id="test-terminal-risk-stage")
    with running_in_thread(stage.run, "terminal-risk-rekey"):
        blocker.hold_until(lambda: stage.stats.consumers_replaced >= 2)
        assert stage.stats.consumed == 0
        blocker.leave()
        produce_transactions(producer, settings.topics.transactions, f"stage-{uuid.uuid4()}", 1)
        wait_until(lambda: stage.stats.consumed > 0)


def produce_transactions(producer: Producer, topic: str, account: str, count: int) -> None:
    """`count` transaction records of one account (one partition), each delivered."""
    for _ in range(count):
        item = new_transaction(account)
        encoded = serde.encode_transaction_created(
            TransactionCreated(event_id=str(uuid.uuid4()), transaction=item.transaction)
        )
        producer.produce(topic, key=encoded.key, value=encoded.value, headers=list(encoded.headers))
    assert producer.flush(30) == 0


class ConsumerKeepingRekeyer(TerminalEventRekeyer):
    """A re-keying stage whose latest Kafka consumer the test can reach, to pause its fetching."""

    consumer: Consumer | None = None

    def _new_consumer(self, bootstrap: str) -> Consumer:
        self.consumer = super()._new_consumer(bootstrap)
        return self.consumer


def test_an_input_topic_created_again_while_a_stage_runs_is_read_from_its_start(
    kafka_broker: KafkaBroker, own_topics: Settings
) -> None:
    """The stage holds its transactions partitions at offset 3 when the topic is deleted and
    created again. It fetches nothing meanwhile (paused), so the new topic has grown past offset
    3 when it fetches again: a consumer that goes on from its position never sees the first
    records of the new topic."""
    settings = own_topics
    topic = settings.topics.transactions
    stage = ConsumerKeepingRekeyer(settings)
    stage.topic_check_seconds = 0.2
    producer = make_producer(kafka_broker.bootstrap, client_id="test-terminal-risk-stage")
    account = f"recreated-{uuid.uuid4().hex[:10]}"
    produce_transactions(producer, topic, account, 3)
    with running_in_thread(stage.run, "terminal-risk-rekey"):
        wait_until(lambda: stage.stats.consumed == 3)
        assert stage.consumer is not None
        recreate_while_paused(
            stage.consumer,
            settings,
            topic,
            lambda: produce_transactions(producer, topic, account, 6),
        )
        wait_until(lambda: stage.stats.consumed >= 9)
    assert stage.stats.topic_recreations == 1


def watermarks_in(bootstrap: str, topic: str, partition: int, source_topic: str) -> int:
    """How many source watermarks of `source_topic` partition `partition` of `topic` holds."""
    consumer = make_consumer(bootstrap, group_id=f"test-{uuid.uuid4().hex}", client_id="test")
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        consumer.assign([TopicPartition(topic, partition, low)])
        marks = 0
        read = 0
        deadline = time.monotonic() + 30
        while read < high - low:
            assert time.monotonic() < deadline, f"read {read} of {high - low} records"
            for message in consumer.consume(num_messages=100, timeout=1.0):
                assert message.error() is None, message.error()
                read += 1
                event = TerminalEvent.FromString(message.value() or b"")
                if event.HasField("watermark") and event.watermark.source_topic == source_topic:
                    marks += 1
        return marks
    finally:
        consumer.close()


def test_partitions_added_to_the_terminal_events_get_the_re_keying_stage_s_watermarks(
    kafka_broker: KafkaBroker, own_topics: Settings
) -> None:
    """Partitions added to txguard.terminal-events.v1 while the re-keying stage runs: its
    batches send every source's watermark to them too, not only to the partitions it started
    with (librdkafka itself would learn of them only at its next metadata refresh)."""
    settings = own_topics
    source = settings.topics.transactions
    events = settings.topics.terminal_events
    stage = TerminalEventRekeyer(settings)
    stage.topic_check_seconds = 0.2
    producer = make_producer(kafka_broker.bootstrap, client_id="test-terminal-risk-stage")
    account = f"added-{uuid.uuid4().hex[:10]}"
    produce_transactions(producer, source, account, 1)
    first_added = settings.topic_partitions

    def added_partitions_have_watermarks() -> bool:
        produce_transactions(producer, source, account, 1)
        time.sleep(0.5)
        return all(
            watermarks_in(kafka_broker.bootstrap, events, partition, source) > 0
            for partition in (first_added, first_added + 1)
        )

    with running_in_thread(stage.run, "terminal-risk-rekey"):
        wait_until(lambda: stage.stats.consumed == 1)
        add_partitions(kafka_broker.bootstrap, events, first_added + 2)
        wait_until(added_partitions_have_watermarks, timeout=30)


def test_terminal_events_with_more_partitions_than_the_table_stop_the_table_builder(
    kafka_broker: KafkaBroker, own_topics: Settings
) -> None:
    """Partition N of the table holds partition N of the terminal events: partitions added to
    the terminal events alone, while the builder runs, stop it with a `TopicError` (exit code 2)
    naming both."""
    settings = own_topics
    stage = TerminalTableBuilder(settings)
    stage.topic_check_seconds = 0.2
    total = settings.topic_partitions + 2
    error = run_adding_partitions(
        stage.run,
        lambda: bool(stage._tables),  # its partitions' tables are restored
        kafka_broker.bootstrap,
        settings.topics.terminal_events,
        total,
    )
    assert isinstance(error, TopicError), error
    assert str(error) == (
        f"{settings.topics.terminal_risk} has {settings.topic_partitions} partitions but "
        f"{settings.topics.terminal_events} has {total}: they must match; see 'Changing a "
        "partition count' in docs/operations.md"
    )
