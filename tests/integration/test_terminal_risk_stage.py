"""A terminal-risk stage against a real broker: a consumer kept out of its group is replaced; an
input topic created again is read from its start."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
from confluent_kafka import Consumer, Producer

from tests.support import (
    OtherProtocolMember,
    new_transaction,
    recreate_while_paused,
    running_in_thread,
    wait_until,
)
from txguard.config import Settings
from txguard.fraud.terminal_risk import TerminalEventRekeyer
from txguard.kafka import serde
from txguard.kafka.clients import make_producer
from txguard.schema.v1.events_pb2 import TransactionCreated

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
