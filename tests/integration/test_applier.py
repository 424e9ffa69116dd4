"""The decision applier against a real broker and a real SQLite store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from tests.support import (
    OtherProtocolMember,
    committed_offsets,
    new_transaction,
    recreate_while_paused,
    running_in_thread,
    wait_until,
)
from txguard.clock import now_us, timestamp_from_us
from txguard.config import DECISIONS_TOPIC, Settings
from txguard.kafka import serde
from txguard.kafka.clients import make_producer
from txguard.kafka.topic_identity import TopicIdentity
from txguard.schema.v1.decision_pb2 import FraudDecision, Outcome, Reason
from txguard.schema.v1.transaction_pb2 import Transaction, TransactionStatus
from txguard.store.sqlite import SqliteStore
from txguard.transactions import applier as applier_module
from txguard.transactions.applier import ApplierStats, DecisionApplier

if TYPE_CHECKING:
    from tests.conftest import KafkaBroker

pytestmark = pytest.mark.integration


def decision_for(tx: Transaction, outcome: Outcome.ValueType, score: float) -> FraudDecision:
    return FraudDecision(
        decision_id=str(uuid.uuid4()),
        event_id=str(uuid.uuid4()),
        transaction_id=tx.transaction_id,
        account_id=tx.account_id,
        score=score,
        outcome=outcome,
        reasons=[Reason(code="rule.amount_threshold", description="big", contribution=1.0)],
        model_version="rules-only",
        rules_version="rules-1",
        decided_at=timestamp_from_us(now_us()),
    )


def publish(
    producer: Producer, decisions: list[FraudDecision], topic: str = DECISIONS_TOPIC
) -> set[int]:
    """Publish and wait for every delivery; the partitions the decisions went to."""
    errors: list[KafkaError] = []
    partitions: set[int] = set()

    def report(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(error)
        else:
            partitions.add(cast(int, message.partition()))

    for decision in decisions:
        encoded = serde.encode_decision(decision)
        producer.produce(
            topic,
            key=encoded.key,
            value=encoded.value,
            headers=list(encoded.headers),
            on_delivery=report,
        )
    assert producer.flush(30) == 0
    assert not errors, errors
    return partitions


@contextmanager
def running_applier(settings: Settings) -> Iterator[ApplierStats]:
    applier = DecisionApplier(settings)  # opens its own store connection on its thread
    with running_in_thread(applier.run, "decision-applier"):
        yield applier.stats


@pytest.fixture
def settings(txguard_env: dict[str, str]) -> Settings:
    return Settings.from_env(txguard_env)


@pytest.fixture
def producer(kafka_broker: KafkaBroker) -> Iterator[Producer]:
    producer = make_producer(kafka_broker.bootstrap, client_id="test-applier-producer")
    yield producer
    producer.close()


def test_applies_decisions_and_absorbs_replays(settings: Settings, producer: Producer) -> None:
    store = SqliteStore(settings.store_path)
    try:
        account = f"apply-{uuid.uuid4().hex[:10]}"
        items = [new_transaction(account) for _ in range(3)]
        store.record_transactions(items)
        declined, approved, reviewed = (item.transaction for item in items)
        first = [
            decision_for(declined, Outcome.OUTCOME_DECLINE, 0.9),
            decision_for(approved, Outcome.OUTCOME_APPROVE, 0.1),
            decision_for(reviewed, Outcome.OUTCOME_REVIEW, 0.6),
        ]
        unknown_tx = new_transaction(account).transaction  # never stored here
        publish(producer, [*first, decision_for(unknown_tx, Outcome.OUTCOME_APPROVE, 0.0)])

        with running_applier(settings) as stats:
            wait_until(lambda: stats.applied == 3)
            statuses = {
                tx.transaction_id: store.get_transaction(tx.transaction_id)
                for tx in (declined, approved, reviewed)
            }
            assert {k: v.status for k, v in statuses.items() if v} == {
                declined.transaction_id: TransactionStatus.TRANSACTION_STATUS_DECLINED,
                approved.transaction_id: TransactionStatus.TRANSACTION_STATUS_APPROVED,
                reviewed.transaction_id: TransactionStatus.TRANSACTION_STATUS_IN_REVIEW,
            }
            applied = store.get_transaction(declined.transaction_id)
            assert applied is not None and applied.decision == first[0]
            assert stats.unknown >= 1

            # A redelivered decision, and a later different one: the first decision stays.
            late = decision_for(declined, Outcome.OUTCOME_APPROVE, 0.0)
            publish(producer, [first[0], late])
            wait_until(lambda: stats.duplicates == 2)
            assert stats.applied == 3
        after = store.get_transaction(declined.transaction_id)
        assert after is not None
        assert after.status == TransactionStatus.TRANSACTION_STATUS_DECLINED
        assert after.decision.decision_id == first[0].decision_id
    finally:
        store.close()


def test_undecodable_decisions_are_skipped(settings: Settings, producer: Producer) -> None:
    store = SqliteStore(settings.store_path)
    try:
        item = new_transaction(f"skip-{uuid.uuid4().hex[:10]}")
        store.record_transactions([item])
        # Same key as the decision, so the same partition: the garbage is consumed first.
        account = item.transaction.account_id.encode()
        producer.produce(DECISIONS_TOPIC, key=account, value=b"\x00garbage")
        publish(producer, [decision_for(item.transaction, Outcome.OUTCOME_APPROVE, 0.0)])
        with running_applier(settings) as stats:
            wait_until(lambda: stats.applied == 1)
            assert stats.invalid >= 1
        tx = store.get_transaction(item.transaction.transaction_id)
        assert tx is not None and tx.status == TransactionStatus.TRANSACTION_STATUS_APPROVED
    finally:
        store.close()


def applier_commits(bootstrap: str, settings: Settings) -> dict[int, int]:
    """The applier group's committed offset per partition of the decisions topic (absent: none)."""
    return committed_offsets(
        bootstrap, settings.applier_group, DECISIONS_TOPIC, settings.topic_partitions
    )


def watermarks(bootstrap: str) -> dict[int, tuple[int, int]]:
    """The decisions topic's (low, high) watermark per partition."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-applier-ends"})
    try:
        partitions = consumer.list_topics(DECISIONS_TOPIC, timeout=10).topics[DECISIONS_TOPIC]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(DECISIONS_TOPIC, p), timeout=10)
            for p in partitions.partitions
        }
    finally:
        consumer.close()


def end_offsets(bootstrap: str) -> dict[int, int]:
    """The decisions topic's end offset per partition that holds records."""
    return {p: high for p, (_, high) in watermarks(bootstrap).items() if high > 0}


def read_to_end(bootstrap: str, stats: ApplierStats) -> dict[int, int]:
    """Wait until the applier has consumed every record of the decisions topic (the other
    tests' decisions too, which it reads before or after this test's); the end offsets."""
    total = sum(high - low for low, high in watermarks(bootstrap).values())
    wait_until(lambda: stats.consumed >= total)
    return end_offsets(bootstrap)


def test_applied_offsets_are_committed_while_running_and_at_stop(
    settings: Settings, producer: Producer, kafka_broker: KafkaBroker
) -> None:
    """Offsets are committed every COMMIT_INTERVAL_SECONDS, not per batch: everything applied
    is committed soon while the applier runs, and whatever is left when it stops."""
    store = SqliteStore(settings.store_path)
    try:
        account = f"commit-{uuid.uuid4().hex[:10]}"
        items = [new_transaction(account) for _ in range(6)]
        store.record_transactions(items)
        decisions = [decision_for(i.transaction, Outcome.OUTCOME_APPROVE, 0.1) for i in items]
        publish(producer, decisions[:3])
        with running_applier(settings) as stats:
            wait_until(lambda: stats.applied == 3)
            ends = read_to_end(kafka_broker.bootstrap, stats)
            # Every partition the applier read up to its end is committed at its end.
            wait_until(
                lambda: applier_commits(kafka_broker.bootstrap, settings) == ends,
                timeout=10,
            )
            publish(producer, decisions[3:])
            wait_until(lambda: stats.applied == 6)
            ends = read_to_end(kafka_broker.bootstrap, stats)
        assert applier_commits(kafka_broker.bootstrap, settings) == ends
    finally:
        store.close()


def test_offsets_left_uncommitted_are_committed_at_stop(
    settings: Settings,
    producer: Producer,
    kafka_broker: KafkaBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(applier_module, "COMMIT_INTERVAL_SECONDS", 3600.0)
    store = SqliteStore(settings.store_path)
    try:
        items = [new_transaction(f"stop-{uuid.uuid4().hex[:10]}") for _ in range(4)]
        store.record_transactions(items)
        publish(
            producer, [decision_for(i.transaction, Outcome.OUTCOME_DECLINE, 0.9) for i in items]
        )
        with running_applier(settings) as stats:
            wait_until(lambda: stats.applied == 4)
            ends = read_to_end(kafka_broker.bootstrap, stats)
            assert applier_commits(kafka_broker.bootstrap, settings) == {}
        assert applier_commits(kafka_broker.bootstrap, settings) == ends
    finally:
        store.close()


def test_a_consumer_kept_out_of_its_group_is_replaced_and_applies_once_let_in(
    settings: Settings, producer: Producer, kafka_broker: KafkaBroker
) -> None:
    """A member of the applier group with an assignment strategy the applier does not speak keeps
    the applier's consumer from joining while the cluster answers: a membership that does not
    work. The applier replaces its consumer; once the other member leaves, it applies."""
    blocker = OtherProtocolMember(kafka_broker.bootstrap, settings.applier_group, [DECISIONS_TOPIC])
    store = SqliteStore(settings.store_path)
    applier = DecisionApplier(settings, group_stall_seconds=3.0)
    try:
        item = new_transaction(f"stalled-{uuid.uuid4().hex[:10]}")
        store.record_transactions([item])
        with running_in_thread(applier.run, "decision-applier"):
            blocker.hold_until(lambda: applier.stats.consumers_replaced >= 2)
            assert applier.stats.consumed == 0
            blocker.leave()
            publish(producer, [decision_for(item.transaction, Outcome.OUTCOME_APPROVE, 0.1)])
            wait_until(lambda: applier.stats.applied == 1)
        applied = store.get_transaction(item.transaction.transaction_id)
        assert applied is not None
        assert applied.status == TransactionStatus.TRANSACTION_STATUS_APPROVED
    finally:
        store.close()


class ConsumerKeepingApplier(DecisionApplier):
    """An applier whose latest Kafka consumer the test can reach, to pause its fetching."""

    consumer: Consumer | None = None

    def _new_consumer(self, bootstrap: str) -> Consumer:
        self.consumer = super()._new_consumer(bootstrap)
        return self.consumer


def test_a_decisions_topic_created_again_while_the_applier_runs_is_read_from_its_start(
    own_topics: Settings, producer: Producer
) -> None:
    """The applier holds its partitions at offset 3 when the decisions topic is deleted and
    created again. It fetches nothing meanwhile (paused), so the new topic has grown past offset
    3 when it fetches again: a consumer that goes on from its position never sees the first
    decisions of the new topic."""
    settings = own_topics
    topic = settings.topics.decisions
    store = SqliteStore(settings.store_path)
    applier = ConsumerKeepingApplier(settings, topic_check_seconds=0.2)
    try:
        # One account: one partition of the decisions topic.
        account = f"recreated-{uuid.uuid4().hex[:10]}"
        items = [new_transaction(account) for _ in range(9)]
        store.record_transactions(items)
        decisions = [decision_for(i.transaction, Outcome.OUTCOME_APPROVE, 0.1) for i in items]
        publish(producer, decisions[:3], topic)
        with running_in_thread(applier.run, "decision-applier"):
            wait_until(lambda: applier.stats.applied == 3)
            assert applier.consumer is not None
            recreate_while_paused(
                applier.consumer, settings, topic, lambda: publish(producer, decisions[3:], topic)
            )
            wait_until(lambda: applier.stats.applied == 9)
        assert applier.stats.topic_recreations == 1
        for item in items:
            stored = store.get_transaction(item.transaction.transaction_id)
            assert stored is not None
            assert stored.status == TransactionStatus.TRANSACTION_STATUS_APPROVED
    finally:
        store.close()


def committed_with_metadata(
    bootstrap: str, group: str, topic: str, partition: int
) -> tuple[int, str | None]:
    """The group's committed offset of one partition and the metadata committed with it."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        [found] = consumer.committed([TopicPartition(topic, partition)], timeout=10)
        return found.offset, found.metadata
    finally:
        consumer.close()


def test_an_offset_committed_for_an_older_topic_of_the_same_name_is_not_trusted(
    kafka_broker: KafkaBroker, own_topics: Settings, producer: Producer
) -> None:
    """Offsets are committed with the id of the topic they count in. An offset committed for the
    topic's predecessor (by a member that had not noticed the topic was created again) says
    nothing of the topic now: the applier starts that partition from its beginning."""
    settings = own_topics
    topic = settings.topics.decisions
    store = SqliteStore(settings.store_path)
    try:
        account = f"stale-{uuid.uuid4().hex[:10]}"
        items = [new_transaction(account) for _ in range(3)]
        store.record_transactions(items)
        [partition] = publish(
            producer,
            [decision_for(i.transaction, Outcome.OUTCOME_APPROVE, 0.1) for i in items],
            topic,
        )
        # The end of the partition, committed as if for an older topic of the same name.
        stale = Consumer(
            {"bootstrap.servers": kafka_broker.bootstrap, "group.id": settings.applier_group}
        )
        stale.commit(
            offsets=[TopicPartition(topic, partition, 3, metadata="an-older-topic-id")],
            asynchronous=False,
        )
        stale.close()
        applier = DecisionApplier(settings)
        with running_in_thread(applier.run, "decision-applier"):
            wait_until(lambda: applier.stats.applied == 3)
            wait_until(
                lambda: (
                    committed_with_metadata(
                        kafka_broker.bootstrap, settings.applier_group, topic, partition
                    )[1]
                    != "an-older-topic-id"
                )
            )
        offset, metadata = committed_with_metadata(
            kafka_broker.bootstrap, settings.applier_group, topic, partition
        )
        # Committed again with the topic's own id, which a later member trusts.
        identity = TopicIdentity(kafka_broker.bootstrap, [topic])
        try:
            assert (offset, metadata) == (3, identity.current(topic))
        finally:
            identity.close()
    finally:
        store.close()
