"""TopicIdentity against a real broker: a topic deleted and created again is told by its id."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest
from confluent_kafka import TopicPartition

from tests.support import delete_topics, recreate_topic, wait_until
from txguard.config import Settings
from txguard.kafka.clients import make_consumer
from txguard.kafka.topic_identity import TopicIdentity, TopicRecreated
from txguard.kafka.topics import ensure_topics

if TYPE_CHECKING:
    from tests.conftest import KafkaBroker

pytestmark = pytest.mark.integration


def collect(identity: TopicIdentity, reports: list[TopicRecreated]) -> bool:
    """Add what `check()` reports now; whether anything has been reported."""
    reports.extend(identity.check())
    return bool(reports)


def nothing_reported_for(identity: TopicIdentity, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert identity.check() == []
        time.sleep(0.01)


def test_a_topic_created_again_is_reported_once_and_read_as_new_once_read_from_start(
    kafka_broker: KafkaBroker, own_topics: Settings
) -> None:
    settings = own_topics
    transactions, labels = settings.topics.transactions, settings.topics.labels
    identity = TopicIdentity(kafka_broker.bootstrap, [transactions, labels], check_seconds=0.05)
    consumer = make_consumer(kafka_broker.bootstrap, group_id=f"test-{uuid.uuid4()}", client_id="t")
    try:
        identity.learn()
        first_ids = {topic: identity.current(topic) for topic in (transactions, labels)}
        assert {topic: identity.topic_id(topic) for topic in first_ids} == first_ids
        # The same topics, asked again for a second: nothing to report.
        nothing_reported_for(identity, 1.0)
        consumer.assign(
            [TopicPartition(transactions, p, 0) for p in range(settings.topic_partitions)]
        )
        recreate_topic(settings, transactions)
        new_id = identity.current(transactions)
        reports: list[TopicRecreated] = []
        wait_until(lambda: collect(identity, reports))
        assert reports == [
            TopicRecreated(transactions, first_ids[transactions], new_id, settings.topic_partitions)
        ]
        # Reported once; until it is read from its start, it is read as the old topic, and the
        # offsets committed for it say so.
        nothing_reported_for(identity, 0.5)
        assert identity.topic_id(transactions) == first_ids[transactions]
        [stamp] = identity.stamped([TopicPartition(transactions, 0, 7)])
        assert (stamp.offset, stamp.metadata) == (7, first_ids[transactions])
        # Read from its start: a partition librdkafka would not move yet is handed back a little
        # later, until every partition has moved.
        identity.read_from_start(consumer, reports[0], what="test")
        while identity.topic_id(transactions) != new_id:
            for again in identity.check():
                assert again == replace(reports[0], again=True)
                identity.read_from_start(consumer, again, what="test")
            consumer.consume(num_messages=10, timeout=0.05)
        [stamp] = identity.stamped([TopicPartition(transactions, 0, 7)])
        assert stamp.metadata == new_id
        assert identity.topic_id(labels) == first_ids[labels]
        nothing_reported_for(identity, 0.5)
    finally:
        consumer.close()
        identity.close()


def test_a_topic_that_is_gone_changes_nothing_until_it_is_back(
    kafka_broker: KafkaBroker, own_topics: Settings
) -> None:
    settings = own_topics
    topic = settings.topics.transactions
    identity = TopicIdentity(kafka_broker.bootstrap, [topic], check_seconds=0.05)
    try:
        # Without `learn()`, the first answer gives the id the topic is read as.
        wait_until(lambda: not identity.check() and identity.topic_id(topic) is not None)
        first_id = str(identity.topic_id(topic))
        delete_topics(kafka_broker.bootstrap, [topic])
        # Asked for 2 s while the topic does not exist: no report, the id known is kept.
        nothing_reported_for(identity, 2.0)
        assert identity.topic_id(topic) == first_id
        ensure_topics(kafka_broker.bootstrap, settings)
        reports: list[TopicRecreated] = []
        wait_until(lambda: collect(identity, reports))
        assert reports == [
            TopicRecreated(topic, first_id, identity.current(topic), settings.topic_partitions)
        ]
    finally:
        identity.close()
