"""The fraud detector against a real broker: decisions, order, rules, DLQ, dedup, state restore.

The detector runs in a thread of this process (so its counters can be read), except in the
restart test, where the first instance is a real `txguard serve detector` process stopped by
SIGTERM. Every test uses its own consumer group and its own account ids, and reads only its own
records from the shared topics.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from tests.support import (
    OtherProtocolMember,
    committed_offsets,
    recreate_topic,
    run_adding_partitions,
    running_in_thread,
    start_group_at_end,
    wait_until,
)
from txguard.clock import now_us
from txguard.config import DECISIONS_TOPIC, DLQ_TOPIC, TRANSACTIONS_TOPIC, Settings
from txguard.fraud import detector as detector_module
from txguard.fraud.changelog import ChangelogNotCopartitioned, restore_partitions
from txguard.fraud.detector import FraudDetector
from txguard.fraud.feature_batch import FeatureBatch
from txguard.fraud.scoring import RuleScorer, ScoreResult
from txguard.fraud.state import AccountHistory, event_id_hash
from txguard.kafka import serde
from txguard.kafka.clients import make_consumer, make_producer
from txguard.kafka.topics import ensure_topics
from txguard.schema.v1.decision_pb2 import FraudDecision, Outcome
from txguard.schema.v1.detector_state_pb2 import AccountHistoryState
from txguard.schema.v1.events_pb2 import TransactionCreated
from txguard.schema.v1.transaction_pb2 import Transaction

if TYPE_CHECKING:
    from tests.conftest import KafkaBroker

pytestmark = pytest.mark.integration

DEADLINE_SECONDS = 60.0


def transaction_event(
    account_id: str, *, amount_minor: int = 1_000, occurred_at_us: int | None = None
) -> TransactionCreated:
    now = now_us()
    tx = Transaction(
        transaction_id=str(uuid.uuid4()),
        account_id=account_id,
        amount_minor=amount_minor,
        currency="EUR",
    )
    tx.occurred_at.FromMicroseconds(now if occurred_at_us is None else occurred_at_us)
    tx.accepted_at.FromMicroseconds(now)
    return TransactionCreated(event_id=str(uuid.uuid4()), transaction=tx)


class RecordProducer:
    """Produces records to the shared topics and waits for every delivery."""

    def __init__(self, bootstrap: str, topic: str = TRANSACTIONS_TOPIC) -> None:
        self._producer: Producer = make_producer(bootstrap, client_id="test-detector-producer")
        self._topic = topic
        self._errors: list[KafkaError] = []

    def events(self, events: list[TransactionCreated]) -> None:
        for event in events:
            encoded = serde.encode_transaction_created(event)
            self.raw(encoded.key, encoded.value, list(encoded.headers))

    def raw(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self._producer.produce(
            self._topic,
            key=key,
            value=value,
            headers=cast(list[tuple[str, str | bytes | None]], headers),
            on_delivery=self._report,
        )
        assert self._producer.flush(30) == 0
        assert not self._errors, self._errors

    def close(self) -> None:
        self._producer.close()

    def _report(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._errors.append(error)


class TopicReader:
    """Reads a topic from the beginning in its own group, keeping only the records wanted."""

    def __init__(self, bootstrap: str, topic: str, wanted: Callable[[Message], bool]) -> None:
        self._consumer: Consumer = make_consumer(
            bootstrap, group_id=f"test-detector-reader-{uuid.uuid4().hex}", client_id="test-reader"
        )
        self._consumer.subscribe([topic])
        self._wanted = wanted
        self.records: list[Message] = []

    def until(
        self, done: Callable[[list[Message]], bool], timeout: float = DEADLINE_SECONDS
    ) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.records):
            assert time.monotonic() < deadline, f"timed out with {len(self.records)} records"
            for message in self._consumer.consume(num_messages=1000, timeout=0.2):
                if message.error() is None and self._wanted(message):
                    self.records.append(message)

    def close(self) -> None:
        self._consumer.close()


class DecisionReader(TopicReader):
    def __init__(self, bootstrap: str, accounts: set[str], topic: str = DECISIONS_TOPIC) -> None:
        super().__init__(bootstrap, topic, lambda m: (m.key() or b"").decode() in accounts)

    @property
    def decisions(self) -> list[FraudDecision]:
        return [FraudDecision.FromString(m.value() or b"") for m in self.records]

    def until_decided(self, transaction_ids: set[str]) -> list[FraudDecision]:
        def done(_records: list[Message]) -> bool:
            return transaction_ids <= {d.transaction_id for d in self.decisions}

        self.until(done)
        return self.decisions


@contextmanager
def running_detector(settings: Settings) -> Iterator[FraudDetector]:
    """A detector on a thread; stopped (and its error, if any, raised) on exit."""
    detector = FraudDetector(settings)
    with running_in_thread(detector.run, "fraud-detector"):
        yield detector


@pytest.fixture
def settings(txguard_env: dict[str, str]) -> Settings:
    return Settings.from_env({**txguard_env, "TXGUARD_VELOCITY_MAX_TRANSACTIONS": "3"})


@pytest.fixture
def produce(kafka_broker: KafkaBroker) -> Iterator[RecordProducer]:
    producer = RecordProducer(kafka_broker.bootstrap)
    yield producer
    producer.close()


def new_account(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def changelog_histories(
    kafka_broker: KafkaBroker, settings: Settings, partitions: list[int]
) -> dict[str, AccountHistory]:
    """Every account's latest state on these partitions of the detector group's changelog."""
    held = restore_partitions(
        kafka_broker.bootstrap,
        settings.detector_state_topic,
        partitions,
        group_id=settings.detector_group,
    )
    return {
        state.account_id: AccountHistory.from_proto(state)
        for states in held.values()
        for state in states
    }


def detector_group_at_end(kafka_broker: KafkaBroker, settings: Settings) -> dict[int, int]:
    """The test's detector group starts at the current end of the transactions topic."""
    return start_group_at_end(
        kafka_broker.bootstrap,
        settings.detector_group,
        TRANSACTIONS_TOPIC,
        settings.topic_partitions,
    )


def test_decides_every_transaction_in_account_order_and_rules_fire(
    kafka_broker: KafkaBroker, settings: Settings, produce: RecordProducer
) -> None:
    window_us = settings.velocity_window_seconds * 1_000_000
    start = now_us() - 10 * window_us
    ordered = [new_account("order") for _ in range(3)]
    # Each transaction of these accounts one window after the previous one: velocity never fires.
    spaced = {
        account: [
            transaction_event(account, occurred_at_us=start + i * window_us) for i in range(6)
        ]
        for account in ordered
    }
    big, review, fast = new_account("big"), new_account("review"), new_account("fast")
    threshold = settings.amount_threshold_minor
    big_event = transaction_event(big, amount_minor=4 * threshold)
    review_event = transaction_event(review, amount_minor=threshold)
    # Five within one second of event time, with a limit of 3: the 4th and 5th exceed it.
    fast_events = [transaction_event(fast, occurred_at_us=start + i * 1000) for i in range(5)]
    events = [e for batch in zip(*spaced.values(), strict=True) for e in batch]
    events += [big_event, review_event, *fast_events]
    produce.events(events)

    reader = DecisionReader(kafka_broker.bootstrap, {*ordered, big, review, fast})
    try:
        with running_detector(settings) as detector:
            decisions = reader.until_decided({e.transaction.transaction_id for e in events})
    finally:
        reader.close()

    assert len(decisions) == len(events)
    for account, account_events in spaced.items():
        decided = [d.transaction_id for d in decisions if d.account_id == account]
        assert decided == [e.transaction.transaction_id for e in account_events]
        assert {d.outcome for d in decisions if d.account_id == account} == {
            Outcome.OUTCOME_APPROVE
        }
    by_tx = {d.transaction_id: d for d in decisions}
    big_decision = by_tx[big_event.transaction.transaction_id]
    assert big_decision.outcome == Outcome.OUTCOME_DECLINE
    assert [r.code for r in big_decision.reasons] == ["rule.amount_threshold"]
    assert big_decision.event_id == big_event.event_id
    assert big_decision.rules_version and big_decision.model_version == "rules-only"
    assert big_decision.accepted_at == big_event.transaction.accepted_at
    review_decision = by_tx[review_event.transaction.transaction_id]
    assert review_decision.outcome == Outcome.OUTCOME_REVIEW
    assert [r.code for r in review_decision.reasons] == ["rule.amount_threshold"]
    fast_decisions = [by_tx[e.transaction.transaction_id] for e in fast_events]
    assert [[r.code for r in d.reasons] for d in fast_decisions] == [
        [],
        [],
        [],
        ["rule.velocity"],
        ["rule.velocity"],
    ]
    # 4 of 3 allowed: review; 5 of 3: the score grows with the excess and reaches decline.
    assert [d.outcome for d in fast_decisions][3:] == [
        Outcome.OUTCOME_REVIEW,
        Outcome.OUTCOME_DECLINE,
    ]
    assert detector.stats.decided >= len(events)


def test_poison_records_are_dead_lettered_and_processing_continues(
    kafka_broker: KafkaBroker, settings: Settings, produce: RecordProducer
) -> None:
    account = new_account("poison")
    key = account.encode()
    before = transaction_event(account)
    after = transaction_event(account)
    wrong_schema = serde.encode_decision(FraudDecision(decision_id="d", transaction_id="t"))
    produce.events([before])
    produce.raw(key, b"\xff\x00 not protobuf \x01", [])
    produce.raw(key, wrong_schema.value, list(wrong_schema.headers))
    produce.events([after])

    decisions = DecisionReader(kafka_broker.bootstrap, {account})
    dlq = TopicReader(kafka_broker.bootstrap, DLQ_TOPIC, lambda m: m.key() == key)
    try:
        with running_detector(settings) as detector:
            decided = decisions.until_decided(
                {before.transaction.transaction_id, after.transaction.transaction_id}
            )
            dlq.until(lambda records: len(records) >= 2)
    finally:
        decisions.close()
        dlq.close()

    assert [d.transaction_id for d in decided] == [
        before.transaction.transaction_id,
        after.transaction.transaction_id,
    ]
    garbage, wrong = sorted(dlq.records, key=lambda m: int(header(m, serde.HEADER_DLQ_OFFSET)))
    assert garbage.value() == b"\xff\x00 not protobuf \x01"
    assert wrong.value() == wrong_schema.value
    for record in (garbage, wrong):
        assert header(record, serde.HEADER_DLQ_TOPIC) == TRANSACTIONS_TOPIC.encode()
        assert int(header(record, serde.HEADER_DLQ_PARTITION)) >= 0
        assert int(header(record, serde.HEADER_DLQ_OFFSET)) >= 0
        assert header(record, serde.HEADER_DLQ_ERROR)
    assert header(garbage, serde.HEADER_DLQ_ERROR_KIND) == b"missing-schema"
    assert header(wrong, serde.HEADER_DLQ_ERROR_KIND) == b"wrong-schema"
    # The wrong-schema record keeps its original headers beside the DLQ ones.
    assert header(wrong, serde.HEADER_SCHEMA) == b"txguard.v1.FraudDecision"
    assert detector.stats.dead_lettered >= 2


def header(message: Message, name: str) -> bytes:
    for key, value in cast(list[tuple[str, bytes]], message.headers() or []):
        if key == name:
            return value
    raise AssertionError(f"no header {name}")


def test_duplicate_event_is_decided_once(
    kafka_broker: KafkaBroker, settings: Settings, produce: RecordProducer
) -> None:
    account = new_account("dup")
    event = transaction_event(account)
    marker = transaction_event(account)
    # The relay may publish an event twice (crash before marking it); here in the same batch
    # and in a later one.
    produce.events([event, event])
    reader = DecisionReader(kafka_broker.bootstrap, {account})
    try:
        with running_detector(settings) as detector:
            reader.until_decided({event.transaction.transaction_id})
            produce.events([event, marker])
            # Same account, same partition: a second decision would come before the marker's.
            decisions = reader.until_decided({marker.transaction.transaction_id})
            duplicates = detector.stats.duplicates_dropped
    finally:
        reader.close()
    assert [d.transaction_id for d in decisions] == [
        event.transaction.transaction_id,
        marker.transaction.transaction_id,
    ]
    assert duplicates >= 2


def test_dedup_state_survives_a_restart(
    kafka_broker: KafkaBroker,
    settings: Settings,
    txguard_env: dict[str, str],
    produce: RecordProducer,
) -> None:
    account = new_account("restart")
    event = transaction_event(account)
    produce.events([event])
    reader = DecisionReader(kafka_broker.bootstrap, {account})
    try:
        # First instance: a real detector process, stopped by SIGTERM once it has decided.
        process = subprocess.Popen(
            [sys.executable, "-m", "txguard", "serve", "detector"],
            env={**txguard_env, "TXGUARD_VELOCITY_MAX_TRANSACTIONS": "3"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            reader.until_decided({event.transaction.transaction_id})
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0, stderr.decode(errors="replace")[-3000:]

        # The relay republishes the event (e.g. it crashed before marking it published).
        marker = transaction_event(account)
        produce.events([event, marker])
        # Second instance, same group: restores the partition's state from the changelog.
        with running_detector(settings) as detector:
            decisions = reader.until_decided({marker.transaction.transaction_id})
            duplicates = detector.stats.duplicates_dropped
            restored = detector.stats.restored_accounts
    finally:
        reader.close()
    assert [d.transaction_id for d in decisions] == [
        event.transaction.transaction_id,
        marker.transaction.transaction_id,
    ]
    assert duplicates >= 1
    assert restored >= 1


def assigned(detector: FraudDetector) -> set[int]:
    while True:
        try:
            return set(detector.state.partitions)
        except RuntimeError:  # the detector thread changed its assignment meanwhile
            continue


def test_dedup_state_follows_partitions_when_a_second_instance_joins(
    kafka_broker: KafkaBroker, settings: Settings, produce: RecordProducer
) -> None:
    accounts = [new_account("rebalance") for _ in range(12)]
    first_events = {account: transaction_event(account) for account in accounts}
    markers = {account: transaction_event(account) for account in accounts}
    produce.events(list(first_events.values()))
    reader = DecisionReader(kafka_broker.bootstrap, set(accounts))
    try:
        with running_detector(settings) as first:
            reader.until_decided({e.transaction.transaction_id for e in first_events.values()})
            partitions = assigned(first)
            assert len(partitions) == settings.topic_partitions
            with running_detector(settings) as second:
                # Cooperative rebalance: some partitions move, with their state, to the newcomer.
                deadline = time.monotonic() + DEADLINE_SECONDS
                while not (assigned(second) and assigned(first) | assigned(second) == partitions):
                    assert time.monotonic() < deadline, "second detector never got partitions"
                    time.sleep(0.05)
                assert not assigned(first) & assigned(second)
                produce.events([*first_events.values(), *markers.values()])
                decisions = reader.until_decided(
                    {e.transaction.transaction_id for e in markers.values()}
                )
                moved = second.stats.restored_accounts
                dropped = first.stats.duplicates_dropped + second.stats.duplicates_dropped
    finally:
        reader.close()
    for account in accounts:
        assert [d.transaction_id for d in decisions if d.account_id == account] == [
            first_events[account].transaction.transaction_id,
            markers[account].transaction.transaction_id,
        ]
    assert moved >= 1
    assert dropped >= len(accounts)


def test_offsets_are_committed_only_once_the_changelog_holds_their_events(
    kafka_broker: KafkaBroker,
    settings: Settings,
    produce: RecordProducer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One account per checkpoint step and idle iterations of 0.1 s: the round that writes these
    # accounts takes more than a second, and the committed offsets and then the changelog are read
    # again and again meanwhile. Committing before the state is written fails the check.
    monkeypatch.setattr(detector_module, "CHECKPOINT_STEP_ACCOUNTS", 1)
    monkeypatch.setattr(detector_module, "CONSUME_TIMEOUT_SECONDS", 0.1)
    # The group starts after every earlier test's records: a round holding their hundreds of
    # accounts would take minutes at one account per idle iteration.
    detector_group_at_end(kafka_broker, settings)
    accounts = [new_account("round") for _ in range(12)]
    events = {account: transaction_event(account) for account in accounts}
    produce.events(list(events.values()))
    placed = TopicReader(
        kafka_broker.bootstrap, TRANSACTIONS_TOPIC, lambda m: (m.key() or b"").decode() in accounts
    )
    placed.until(lambda records: len(records) >= len(accounts))
    placed.close()
    # account -> (partition, offset) of its one event
    where = {
        (m.key() or b"").decode(): (cast(int, m.partition()), cast(int, m.offset()))
        for m in placed.records
    }
    partitions = sorted({partition for partition, _ in where.values()})
    group = make_consumer(
        kafka_broker.bootstrap, group_id=settings.detector_group, client_id="test-committed"
    )
    reader = DecisionReader(kafka_broker.bootstrap, set(accounts))
    checks = 0
    try:
        with running_detector(settings) as detector:
            reader.until_decided({e.transaction.transaction_id for e in events.values()})
            deadline = time.monotonic() + DEADLINE_SECONDS
            while True:
                committed = {
                    tp.partition: tp.offset
                    for tp in group.committed(
                        [TopicPartition(TRANSACTIONS_TOPIC, p) for p in partitions], timeout=10
                    )
                }
                held = changelog_histories(kafka_broker, settings, partitions)
                covered = [a for a, (p, offset) in where.items() if offset < committed[p]]
                for account in covered:
                    assert account in held
                    assert held[account].has_seen(event_id_hash(events[account].event_id))
                checks += 1
                if len(covered) == len(accounts):
                    break
                assert time.monotonic() < deadline, f"committed {len(covered)} of {len(accounts)}"
                time.sleep(0.05)
            checkpoints = detector.stats.checkpoints
    finally:
        reader.close()
        group.close()
    assert checks > 1
    assert checkpoints >= 1


def test_a_restart_recognises_every_event_its_predecessor_wrote_to_state_but_never_committed(
    kafka_broker: KafkaBroker,
    settings: Settings,
    produce: RecordProducer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first detector writes its state but none of its commits happen: what a detector killed
    # between the two leaves behind. Its account's events span 50 days of event time, so by the
    # end its state has forgotten the first ones (it keeps 30 days), and one event arrives 90 days
    # late, decided and never remembered. Their redeliveries must still be recognised.
    start_offsets = detector_group_at_end(kafka_broker, settings)
    day_us = 86_400_000_000
    begin = now_us() - 60 * day_us
    account = new_account("uncommitted")
    events = [transaction_event(account, occurred_at_us=begin + i * 5 * day_us) for i in range(11)]
    events.append(transaction_event(account, occurred_at_us=begin - 40 * day_us))
    produce.events(events)
    ids = {e.transaction.transaction_id for e in events}
    reader = DecisionReader(kafka_broker.bootstrap, {account})
    try:
        with monkeypatch.context() as patch:
            patch.setattr(detector_module, "commit_offsets", lambda *args, **kwargs: None)
            with running_detector(settings):
                reader.until_decided(ids)
                deadline = time.monotonic() + DEADLINE_SECONDS
                while True:
                    state = changelog_histories(
                        kafka_broker, settings, list(range(settings.topic_partitions))
                    )
                    newest = event_id_hash(events[-2].event_id)
                    if account in state and state[account].has_seen(newest):
                        break
                    assert time.monotonic() < deadline, "the state never reached the changelog"
                    time.sleep(0.05)
        # The state forgot the oldest events: only their offsets can tell they were decided.
        assert not state[account].has_seen(event_id_hash(events[0].event_id))
        assert (
            committed_offsets(
                kafka_broker.bootstrap,
                settings.detector_group,
                TRANSACTIONS_TOPIC,
                settings.topic_partitions,
            )
            == start_offsets
        )
        marker = transaction_event(account)
        produce.events([marker])
        with running_detector(settings) as detector:
            decisions = reader.until_decided({marker.transaction.transaction_id})
            duplicates = detector.stats.duplicates_dropped
    finally:
        reader.close()
    assert sorted(d.transaction_id for d in decisions) == sorted(
        [*ids, marker.transaction.transaction_id]
    )
    assert decisions[-1].transaction_id == marker.transaction.transaction_id
    assert duplicates == len(events)


def test_a_state_written_for_a_recreated_topic_does_not_swallow_its_new_records(
    kafka_broker: KafkaBroker,
    settings: Settings,
    produce: RecordProducer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The account's state says it reflects its partition up to an offset the partition has not
    # reached: it was written for a transactions topic since deleted and created again. Its
    # records there are new, not redeliveries.
    detector_group_at_end(kafka_broker, settings)
    ensure_topics(kafka_broker.bootstrap, settings)
    account = new_account("recreated")
    first = transaction_event(account)
    produce.events([first])
    placed = TopicReader(
        kafka_broker.bootstrap, TRANSACTIONS_TOPIC, lambda m: m.key() == account.encode()
    )
    placed.until(lambda records: len(records) == 1)
    placed.close()
    partition = cast(int, placed.records[0].partition())
    offset = cast(int, placed.records[0].offset())
    old = AccountHistoryState(account_id=account, next_offset=offset + 1_000_000)
    producer = make_producer(kafka_broker.bootstrap, client_id="test-old-state")
    producer.produce(
        settings.detector_state_topic,
        key=account.encode(),
        value=old.SerializeToString(),
        partition=partition,
    )
    assert producer.flush(30) == 0
    caplog.set_level(logging.WARNING, logger="txguard.fraud.detector")
    second = transaction_event(account)
    produce.events([second])
    reader = DecisionReader(kafka_broker.bootstrap, {account})
    try:
        with running_detector(settings) as detector:
            decisions = reader.until_decided(
                {first.transaction.transaction_id, second.transaction.transaction_id}
            )
            restored = detector.stats.restored_accounts
    finally:
        reader.close()
    assert [d.transaction_id for d in decisions] == [
        first.transaction.transaction_id,
        second.transaction.transaction_id,
    ]
    assert restored == 1
    assert f"partition {partition} of {TRANSACTIONS_TOPIC} ends at offset" in caplog.text


def test_a_transactions_topic_created_again_while_the_detector_runs_is_read_from_its_start(
    kafka_broker: KafkaBroker, own_topics: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # A first detector decides three events of an account and stops: its checkpoint says the
    # account's partition is processed up to the third's offset. A second detector restores that
    # state and is running when the transactions topic is deleted and created again; the
    # account's next events land on the new topic below that offset (where librdkafka starts the
    # partition again) or around it (where the consumer goes on from its old position). Either
    # way, a detector that did not notice the new topic would never decide some of them.
    settings = own_topics
    topics = settings.topics
    account = new_account("recreated")
    before = [transaction_event(account) for _ in range(3)]
    after = [transaction_event(account) for _ in range(5)]
    marker = transaction_event(account)
    produce = RecordProducer(kafka_broker.bootstrap, topics.transactions)
    reader = DecisionReader(kafka_broker.bootstrap, {account}, topics.decisions)
    caplog.set_level(logging.WARNING, logger="txguard.kafka.topic_identity")
    try:
        produce.events(before)
        with running_detector(settings):
            reader.until_decided({event.transaction.transaction_id for event in before})
        detector = FraudDetector(settings, topic_check_seconds=0.2)
        with running_in_thread(detector.run, "fraud-detector"):
            wait_until(lambda: detector.stats.restored_accounts == 1)
            recreate_topic(settings, topics.transactions)
            produce.events(after)
            reader.until_decided({event.transaction.transaction_id for event in after})
            # Records read before the new topic was noticed are read again after it; the marker,
            # behind them in their partition, is decided after any second decision of theirs.
            produce.events([marker])
            decisions = reader.until_decided({marker.transaction.transaction_id})
        recreations = detector.stats.topic_recreations
    finally:
        produce.close()
        reader.close()
    # Each decided once. The new topic's events may be decided out of order: those the consumer
    # read before the new id was noticed (all but the ones the old state's offsets dropped) come
    # first, the rest once the partition is read again from its start.
    ids = [d.transaction_id for d in decisions]
    assert ids[:3] == [event.transaction.transaction_id for event in before]
    assert sorted(ids[3:-1]) == sorted(event.transaction.transaction_id for event in after)
    assert ids[-1] == marker.transaction.transaction_id
    assert recreations == 1
    assert f"fraud detector: {topics.transactions} was deleted and created again" in caplog.text


def test_a_detector_started_after_its_topic_was_created_again_decides_the_new_records(
    kafka_broker: KafkaBroker, own_topics: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # The first detector decides three events of an account and stops: its state records offset
    # 3 and the topic's id. The topic is deleted and created again while no detector runs, and
    # five events of the account land on it at offsets 0 to 4: the partition ends past the
    # state's offset, so only the topic id tells that the offset counts in the old topic.
    settings = own_topics
    topics = settings.topics
    account = new_account("restarted")
    before = [transaction_event(account) for _ in range(3)]
    after = [transaction_event(account) for _ in range(5)]
    produce = RecordProducer(kafka_broker.bootstrap, topics.transactions)
    reader = DecisionReader(kafka_broker.bootstrap, {account}, topics.decisions)
    caplog.set_level(logging.WARNING, logger="txguard.fraud.detector")
    try:
        produce.events(before)
        with running_detector(settings):
            reader.until_decided({event.transaction.transaction_id for event in before})
        recreate_topic(settings, topics.transactions)
        produce.events(after)
        with running_detector(settings) as detector:
            decisions = reader.until_decided(
                {event.transaction.transaction_id for event in before + after}
            )
            restored = detector.stats.restored_accounts
    finally:
        produce.close()
        reader.close()
    assert [d.transaction_id for d in decisions] == [
        event.transaction.transaction_id for event in before + after
    ]
    assert restored == 1
    assert "counts offsets in the topic before it was deleted and created again" in caplog.text


class FailOnAccount:
    """The rules' scorer, except that it raises for a batch holding the given account."""

    def __init__(self, settings: Settings, account: str) -> None:
        self._rules = RuleScorer.from_settings(settings)
        self._account = account
        self.model_kind = self._rules.model_kind
        self.model_version = self._rules.model_version
        self.rules_version = self._rules.rules_version
        self.shadow_model_version = self._rules.shadow_model_version

    def score_batch(self, batch: FeatureBatch) -> list[ScoreResult]:
        if any(row.account_id == self._account for row in batch.rows):
            raise RuntimeError(f"scoring failed for {self._account}")
        return self._rules.score_batch(batch)


def test_a_batch_that_fails_before_its_decisions_are_sent_is_decided_after_a_restart(
    kafka_broker: KafkaBroker, settings: Settings, produce: RecordProducer
) -> None:
    # The batch's events are in the state once their features are computed; the scorer then
    # fails, the detector stops with the error, and closing its consumer revokes its partitions.
    # A checkpoint there would save the state with those events in it: its successor would drop
    # them as duplicates and they would never be decided.
    detector_group_at_end(kafka_broker, settings)
    fine, failing = new_account("fine"), new_account("failing")
    before = transaction_event(fine)
    produce.events([before])
    reader = DecisionReader(kafka_broker.bootstrap, {fine, failing})
    try:
        detector = FraudDetector(settings, scorer=FailOnAccount(settings, failing))
        with pytest.raises(RuntimeError, match="scoring failed"):
            with running_in_thread(detector.run, "failing-detector"):
                reader.until_decided({before.transaction.transaction_id})
                event = transaction_event(failing)
                produce.events([event])
                # Counted as the batch begins: the scorer fails within the same call, whether
                # or not the stop that leaving this block sets comes first.
                wait_until(lambda: detector.stats.processed >= 2)
        assert detector.stats.decided == 1
        with running_detector(settings):
            decisions = reader.until_decided({event.transaction.transaction_id})
    finally:
        reader.close()
    decided = [d.transaction_id for d in decisions]
    # `before` may be decided again (nothing was committed): the applier keeps the first.
    assert set(decided) == {before.transaction.transaction_id, event.transaction.transaction_id}
    assert decided.count(event.transaction.transaction_id) == 1


def test_a_consumer_kept_out_of_its_group_is_replaced_and_decides_once_let_in(
    kafka_broker: KafkaBroker, settings: Settings, produce: RecordProducer
) -> None:
    """A member of the detector group with an assignment strategy the detector does not speak
    keeps the detector's consumer from joining while the cluster answers. The detector replaces
    its consumer; once the other member leaves, it decides what was waiting."""
    detector_group_at_end(kafka_broker, settings)
    blocker = OtherProtocolMember(
        kafka_broker.bootstrap, settings.detector_group, [TRANSACTIONS_TOPIC]
    )
    account = new_account("stalled")
    event = transaction_event(account)
    reader = DecisionReader(kafka_broker.bootstrap, {account})
    detector = FraudDetector(settings, group_stall_seconds=3.0)
    try:
        with running_in_thread(detector.run, "fraud-detector"):
            blocker.hold_until(lambda: detector.stats.consumers_replaced >= 2)
            assert detector.stats.processed == 0
            blocker.leave()
            produce.events([event])
            decisions = reader.until_decided({event.transaction.transaction_id})
    finally:
        reader.close()
    assert [d.transaction_id for d in decisions] == [event.transaction.transaction_id]


def test_partitions_added_to_the_transactions_topic_stop_a_running_detector(
    kafka_broker: KafkaBroker, own_topics: Settings
) -> None:
    # Partitions added to the transactions topic (kafka-topics --alter) end its co-partitioning
    # with the state changelog: accounts' next events go to other partitions than their state.
    # The detector stops at its next topic check, not minutes later at librdkafka's metadata
    # refresh, when it would be given the added partitions, which have no state.
    settings = own_topics
    total = settings.topic_partitions + 2
    detector = FraudDetector(settings, topic_check_seconds=0.2)
    error = run_adding_partitions(
        detector.run,
        lambda: len(detector.state.partitions) == settings.topic_partitions,
        kafka_broker.bootstrap,
        settings.topics.transactions,
        total,
    )
    assert isinstance(error, ChangelogNotCopartitioned), error
    assert str(error) == (
        f"{settings.topics.transactions} has {total} partitions now, but "
        f"{settings.detector_state_topic} has {settings.topic_partitions}: partitions were added "
        "to it (or it was created again), and accounts' events no longer go to the partition of "
        "their state; see 'Changing a partition count' in docs/operations.md"
    )
