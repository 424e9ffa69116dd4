"""The outbox relay against a real broker and a real SQLite store."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest
from confluent_kafka import Message
from confluent_kafka.admin import NewTopic

from tests.support import new_transaction, wait_until
from txguard.clock import now_us
from txguard.config import TRANSACTIONS_TOPIC, Settings
from txguard.kafka.clients import make_admin, make_consumer
from txguard.kafka.serde import (
    HEADER_EVENT_ID,
    HEADER_SCHEMA,
    HEADER_SCHEMA_VERSION,
)
from txguard.store.outbox_bell import OutboxBell
from txguard.store.sqlite import SqliteStore, outbox_signal
from txguard.transactions import relay as relay_module
from txguard.transactions.relay import OutboxRelay, RelayDeliveryFailed, RelayLockHeld

if TYPE_CHECKING:
    from tests.conftest import KafkaBroker

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
# Records one transaction of account argv[2] in the store at argv[1], from a process of its own.
COMMIT_ONE = """
import sys
from pathlib import Path
from tests.support import new_transaction
from txguard.store.sqlite import SqliteStore
store = SqliteStore(Path(sys.argv[1]))
store.record_transactions([new_transaction(sys.argv[2])])
store.close()
"""


def read_matching(
    bootstrap: str, topic: str, wanted: Callable[[Message], bool], count: int, timeout: float = 30
) -> list[Message]:
    """Records of `topic` (from the beginning) for which `wanted` holds, until `count` are found."""
    consumer = make_consumer(
        bootstrap, group_id=f"test-relay-reader-{uuid.uuid4().hex}", client_id="test-reader"
    )
    found: list[Message] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error() is None and wanted(message):
                    found.append(message)
    finally:
        consumer.close()
    return found


def headers_of(message: Message) -> dict[str, bytes]:
    return {k: v for k, v in cast(list[tuple[str, bytes]], message.headers() or [])}


def event_id_of(message: Message) -> str:
    return headers_of(message).get(HEADER_EVENT_ID, b"").decode()


@pytest.fixture
def settings(txguard_env: dict[str, str]) -> Settings:
    return Settings.from_env(txguard_env)


@pytest.fixture
def store(settings: Settings) -> Iterator[SqliteStore]:
    store = SqliteStore(settings.store_path)
    yield store
    store.close()


def outbox_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        count: int = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    db.close()
    return count


def test_publishes_in_commit_order_with_key_and_headers(
    kafka_broker: KafkaBroker, settings: Settings, store: SqliteStore
) -> None:
    accounts = [f"relay-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    items = [new_transaction(accounts[i % 3]) for i in range(12)]
    # Two commits, so commit order spans more than one store transaction.
    store.record_transactions(items[:5])
    store.record_transactions(items[5:])
    relay = OutboxRelay(settings, store=store, bootstrap=kafka_broker.bootstrap)
    try:
        assert relay.publish_pending() == 12
        assert relay.publish_pending() == 0
    finally:
        relay.close()
    assert store.outbox_backlog().count == 0
    assert relay.stats.published == 12

    expected = {item.outbox_event.event_id: item for item in items}
    messages = read_matching(
        kafka_broker.bootstrap, TRANSACTIONS_TOPIC, lambda m: event_id_of(m) in expected, 12
    )
    assert sorted(event_id_of(m) for m in messages) == sorted(expected)
    for message in messages:
        item = expected[event_id_of(message)]
        assert message.key() == item.transaction.account_id.encode()
        assert message.value() == item.outbox_event.payload
        headers = headers_of(message)
        assert headers[HEADER_SCHEMA] == b"txguard.v1.TransactionCreated"
        assert headers[HEADER_SCHEMA_VERSION] == b"1"
    for account in accounts:
        # Same key, same partition: offset order must be commit order.
        mine = sorted(
            (m for m in messages if m.key() == account.encode()), key=lambda m: m.offset() or 0
        )
        committed = [i.outbox_event.event_id for i in items if i.transaction.account_id == account]
        assert [event_id_of(m) for m in mine] == committed


def test_prunes_only_events_published_before_the_retention(
    kafka_broker: KafkaBroker, settings: Settings, store: SqliteStore
) -> None:
    store.record_transactions([new_transaction(f"prune-{uuid.uuid4().hex[:8]}") for _ in range(4)])
    relay = OutboxRelay(settings, store=store, bootstrap=kafka_broker.bootstrap)
    try:
        assert relay.publish_pending() == 4
        store.record_transactions([new_transaction("prune-unpublished")])
        # Retention is an hour by default: nothing just published is old enough.
        assert relay.prune_published() == 0
        assert outbox_rows(settings.store_path) == 5
        an_hour_later = now_us() + settings.outbox_retention_seconds * 1_000_000 + 1
        assert relay.prune_published(now=an_hour_later) == 4
    finally:
        relay.close()
    # The unpublished event is never pruned.
    assert outbox_rows(settings.store_path) == 1
    assert store.outbox_backlog().count == 1


def test_second_relay_waits_for_the_lock_and_never_publishes_meanwhile(
    kafka_broker: KafkaBroker, settings: Settings, store: SqliteStore
) -> None:
    settings = dataclasses.replace(settings, kafka_bootstrap=kafka_broker.bootstrap)
    first = OutboxRelay(settings, store=store, bootstrap=kafka_broker.bootstrap)
    second = OutboxRelay(settings)  # its own store connection, on its own thread
    stop = threading.Event()
    thread = threading.Thread(target=second.run, args=(stop,), name="second-relay")
    try:
        assert first.publish_pending() == 0  # takes the lock
        store.record_transactions([new_transaction(f"lock-{uuid.uuid4().hex[:8]}")])
        third = OutboxRelay(settings, store=store, bootstrap=kafka_broker.bootstrap)
        with pytest.raises(RelayLockHeld):
            third.publish_pending()
        third.close()
        thread.start()
        time.sleep(1.5)
        assert store.outbox_backlog().count == 1
        assert second.stats.published == 0

        first.close()  # releases the lock: the waiting relay takes over and drains the backlog
        deadline = time.monotonic() + 30
        while store.outbox_backlog().count and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.outbox_backlog().count == 0
        assert second.stats.published == 1
    finally:
        stop.set()
        if thread.ident is not None:
            thread.join(timeout=30)
        first.close()
    assert not thread.is_alive()


def test_backlog_written_during_a_broker_outage_drains_in_order(
    kafka_broker: KafkaBroker, settings: Settings, store: SqliteStore
) -> None:
    account = f"outage-{uuid.uuid4().hex[:8]}"
    settings = dataclasses.replace(settings, kafka_bootstrap=kafka_broker.bootstrap)
    relay = OutboxRelay(settings)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), name="relay-outage")
    thread.start()
    try:
        items = [new_transaction(account) for _ in range(6)]
        store.record_transactions(items[:2])
        wait_until(lambda: store.outbox_backlog().count == 0, timeout=30.0)
        kafka_broker.stop()
        try:
            # The store keeps accepting while Kafka is away; the relay holds the round in flight.
            store.record_transactions(items[2:4])
            store.record_transactions(items[4:])
            time.sleep(1.0)
            assert store.outbox_backlog().count == 4
        finally:
            kafka_broker.start()
        wait_until(lambda: store.outbox_backlog().count == 0, timeout=90)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert relay.stats.failed_deliveries == 0

    expected = [item.outbox_event.event_id for item in items]
    messages = read_matching(
        kafka_broker.bootstrap, TRANSACTIONS_TOPIC, lambda m: m.key() == account.encode(), 6
    )
    in_offset_order = [event_id_of(m) for m in sorted(messages, key=lambda m: m.offset() or 0)]
    assert in_offset_order == expected


@pytest.mark.parametrize("committer", ["this process", "another process"])
def test_a_commit_wakes_the_relay_without_waiting_for_its_poll(
    committer: str,
    kafka_broker: KafkaBroker,
    settings: Settings,
    store: SqliteStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An hour between polls: only the store's notification of the commit can start the round,
    # from this process (its signal) or another (the store's outbox bell).
    monkeypatch.setattr(relay_module, "IDLE_POLL_SECONDS", 3600.0)
    idle = threading.Event()
    wait = OutboxBell.wait

    def wait_and_tell(bell: OutboxBell, timeout: float) -> bool:
        idle.set()  # listening by now: a ring from here on is heard
        return wait(bell, timeout)

    monkeypatch.setattr(OutboxBell, "wait", wait_and_tell)
    settings = dataclasses.replace(settings, kafka_bootstrap=kafka_broker.bootstrap)
    relay = OutboxRelay(settings)  # its own connection, on its own thread, as in the service
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), name="relay-woken")
    thread.start()
    account = f"woken-{uuid.uuid4().hex[:8]}"
    try:
        # The first round found nothing; the relay now waits for a commit (or an hour).
        assert idle.wait(timeout=60)
        if committer == "this process":
            store.record_transactions([new_transaction(account)])
        else:
            subprocess.run(
                [sys.executable, "-c", COMMIT_ONE, str(settings.store_path), account],
                cwd=REPO_ROOT,
                check=True,
                timeout=60,
            )
        wait_until(lambda: relay.stats.published == 1, timeout=60)
        # Marked by the relay itself (no writer in this process) once its marks are due.
        wait_until(lambda: store.outbox_backlog().count == 0, timeout=60)
    finally:
        stop.set()
        outbox_signal(settings.store_path).notify()  # ends the hour-long wait
        thread.join(timeout=30)
    assert not thread.is_alive()
    (message,) = read_matching(
        kafka_broker.bootstrap, TRANSACTIONS_TOPIC, lambda m: m.key() == account.encode(), 1
    )
    assert message.key() == account.encode()


def test_a_relay_of_its_own_gathers_its_marks_and_writes_those_pending_when_it_stops(
    kafka_broker: KafkaBroker,
    settings: Settings,
    store: SqliteStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Marks due only after an hour: only the stop can write them.
    monkeypatch.setattr(relay_module, "MARK_INTERVAL_SECONDS", 3600.0)
    settings = dataclasses.replace(settings, kafka_bootstrap=kafka_broker.bootstrap)
    relay = OutboxRelay(settings)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), name="relay-gathering")
    store.record_transactions([new_transaction(f"gather-{uuid.uuid4().hex[:8]}")])
    thread.start()
    try:
        wait_until(lambda: relay.stats.published == 1, timeout=60)
        store.record_transactions([new_transaction(f"gather-{uuid.uuid4().hex[:8]}")])
        wait_until(lambda: relay.stats.published == 2, timeout=60)
        # Published, and read past, but not marked yet.
        assert store.outbox_backlog().count == 2
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert store.outbox_backlog().count == 0
    assert relay.stats.published == 2


def test_a_relay_whose_marks_fail_keeps_publishing_and_marks_them_later(
    kafka_broker: KafkaBroker,
    settings: Settings,
    store: SqliteStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failed: list[list[int]] = []
    mark_published = SqliteStore.mark_published

    def locked_once(self: SqliteStore, seqs: list[int], published_at_us: int) -> None:
        if not failed:
            failed.append(list(seqs))
            raise sqlite3.OperationalError("database is locked")
        mark_published(self, seqs, published_at_us)

    monkeypatch.setattr(SqliteStore, "mark_published", locked_once)
    settings = dataclasses.replace(settings, kafka_bootstrap=kafka_broker.bootstrap)
    relay = OutboxRelay(settings)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), name="relay-marks-failing")
    account = f"marks-{uuid.uuid4().hex[:8]}"
    store.record_transactions([new_transaction(account) for _ in range(3)])
    thread.start()
    try:
        wait_until(lambda: store.outbox_backlog().count == 0, timeout=60)
        assert thread.is_alive()
        store.record_transactions([new_transaction(account)])
        wait_until(lambda: relay.stats.published == 4, timeout=60)
        wait_until(lambda: store.outbox_backlog().count == 0, timeout=60)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(failed) == 1 and relay.stats.retries == 1
    # The failed marks were written later, not the events published again.
    messages = read_matching(
        kafka_broker.bootstrap, TRANSACTIONS_TOPIC, lambda m: m.key() == account.encode(), 5, 10
    )
    assert len(messages) == 4


def test_a_rejected_event_stays_unpublished_and_the_rest_of_its_round_is_marked(
    kafka_broker: KafkaBroker, settings: Settings, store: SqliteStore
) -> None:
    # A topic of this test's own that takes only small records: the broker rejects the big one,
    # which is the only delivery report of the round (reports come for failures only).
    small_topic = f"test-relay-small-{uuid.uuid4().hex[:8]}"
    with make_admin(kafka_broker.bootstrap) as admin:
        futures = admin.create_topics(
            [NewTopic(small_topic, 1, 1, config={"max.message.bytes": "2048"})]
        )
        futures[small_topic].result(timeout=30)
    account = f"rejected-{uuid.uuid4().hex[:8]}"
    before = new_transaction(account)
    too_big = new_transaction(account)
    too_big = dataclasses.replace(
        too_big,
        outbox_event=dataclasses.replace(
            too_big.outbox_event, topic=small_topic, payload=os.urandom(64 * 1024)
        ),
    )
    after = new_transaction(account)
    store.record_transactions([before, too_big, after])
    relay = OutboxRelay(settings, store=store, bootstrap=kafka_broker.bootstrap)
    try:
        with pytest.raises(RelayDeliveryFailed):
            relay.publish_pending()
    finally:
        relay.close()
    assert relay.stats.published == 2
    assert relay.stats.failed_deliveries == 1
    assert [p.event for p in store.pending_outbox(10)] == [too_big.outbox_event]


def test_with_a_writer_attached_the_relay_hands_acknowledged_events_over_and_reads_past_them(
    kafka_broker: KafkaBroker, settings: Settings, store: SqliteStore
) -> None:
    items = [new_transaction(f"handed-{uuid.uuid4().hex[:8]}") for _ in range(4)]
    store.record_transactions(items[:3])
    handoff = store.published_handoff()
    wakes: list[bool] = []
    assert handoff.attach(lambda: wakes.append(True))  # stands in for the API's writer
    relay = OutboxRelay(settings, store=store, bootstrap=kafka_broker.bootstrap)
    try:
        assert relay.publish_pending() == 3
        seqs = [p.seq for p in store.pending_outbox(10)]
        # Handed over, not written: the relay took no write lock, and the events are still
        # unpublished in the store until the writer's next batch.
        (handed,) = handoff.take()
        assert list(handed.seqs) == seqs
        assert wakes == [True]
        # The next round reads past them instead of publishing them again.
        store.record_transactions(items[3:])
        assert relay.publish_pending() == 1
        (later,) = handoff.take()
        assert len(later.seqs) == 1 and later.seqs[0] > seqs[-1]
        # Once the writer is gone the relay marks by itself.
        assert handoff.detach() == []
        store.record_transactions([new_transaction("handed-after")])
        assert relay.publish_pending() == 1
    finally:
        relay.close()
        handoff.detach()
    assert [p.seq for p in store.pending_outbox(10)] == [*seqs, later.seqs[0]]
