"""TopicIdentity against a real broker: a topic deleted and created again is told by its id."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.support import delete_namespace_topics, delete_topics, recreate_topic, wait_until
from txguard.config import Settings
from txguard.kafka.topic_identity import TopicIdentity, TopicRecreated
from txguard.kafka.topics import ensure_topics

if TYPE_CHECKING:
    from tests.conftest import KafkaBroker

pytestmark = pytest.mark.integration


def collect(identity: TopicIdentity, reports: list[TopicRecreated]) -> bool:
    """Add what `recreated()` reports now; whether anything has been reported."""
    reports.extend(identity.recreated())
    return bool(reports)


@pytest.fixture
def settings(kafka_broker: KafkaBroker, txguard_env: dict[str, str]) -> Settings:
    """Settings of a namespace of this test's own, whose topics exist."""
    namespace = f"identity-{uuid.uuid4().hex[:10]}"
    settings = Settings.from_env({**txguard_env, "TXGUARD_TOPIC_NAMESPACE": namespace})
    ensure_topics(kafka_broker.bootstrap, settings)
    return settings


def test_a_topic_created_again_is_reported_once_with_its_new_id(
    kafka_broker: KafkaBroker, settings: Settings
) -> None:
    transactions, labels = settings.topics.transactions, settings.topics.labels
    identity = TopicIdentity(kafka_broker.bootstrap, [transactions, labels], check_seconds=0.05)
    try:
        wait_until(lambda: not identity.recreated() and identity.topic_id(labels) is not None)
        first_ids = {topic: identity.topic_id(topic) for topic in (transactions, labels)}
        # The same topics, asked again for a second: nothing to report.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert identity.recreated() == []
            time.sleep(0.01)
        recreate_topic(settings, transactions)
        reports: list[TopicRecreated] = []
        wait_until(lambda: collect(identity, reports))
        new_id = identity.topic_id(transactions)
        assert new_id is not None and new_id != first_ids[transactions]
        assert reports == [
            TopicRecreated(
                transactions, str(first_ids[transactions]), new_id, settings.topic_partitions
            )
        ]
        # Reported once: later answers give the new id, now the one compared with.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert identity.recreated() == []
            time.sleep(0.01)
        assert identity.topic_id(labels) == first_ids[labels]
    finally:
        identity.close()
        delete_namespace_topics(settings)


def test_a_topic_that_is_gone_changes_nothing_until_it_is_back(
    kafka_broker: KafkaBroker, settings: Settings
) -> None:
    topic = settings.topics.transactions
    identity = TopicIdentity(kafka_broker.bootstrap, [topic], check_seconds=0.05)
    try:
        wait_until(lambda: not identity.recreated() and identity.topic_id(topic) is not None)
        first_id = str(identity.topic_id(topic))
        delete_topics(kafka_broker.bootstrap, [topic])
        # Asked for 2 s while the topic does not exist: no report, the id seen last is kept.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert identity.recreated() == []
            time.sleep(0.01)
        assert identity.topic_id(topic) == first_id
        ensure_topics(kafka_broker.bootstrap, settings)
        reports: list[TopicRecreated] = []
        wait_until(lambda: collect(identity, reports))
        assert reports == [
            TopicRecreated(
                topic, first_id, str(identity.topic_id(topic)), settings.topic_partitions
            )
        ]
    finally:
        identity.close()
        delete_namespace_topics(settings)
