"""ConfirmedPublisher against a real broker, and against none: what `try_confirm` promises."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from tests.conftest import free_tcp_port
from tests.support import wait_until
from txguard.config import DLQ_TOPIC
from txguard.kafka.consumer_loop import OutgoingRecord
from txguard.kafka.publisher import ConfirmedPublisher

if TYPE_CHECKING:
    from tests.conftest import KafkaBroker

pytestmark = pytest.mark.integration


def records(count: int) -> list[OutgoingRecord]:
    key = f"publisher-test-{uuid.uuid4().hex}".encode()
    return [OutgoingRecord(DLQ_TOPIC, key, b"x" * 100) for _ in range(count)]


def test_try_confirm_is_true_once_everything_sent_is_acknowledged(
    kafka_broker: KafkaBroker,
) -> None:
    publisher = ConfirmedPublisher(
        kafka_broker.bootstrap, client_id="test-publisher", on_retry=lambda: None
    )
    try:
        assert publisher.try_confirm()  # nothing sent
        publisher.send(records(50))
        assert publisher.pending == 50
        wait_until(publisher.try_confirm, timeout=30)
        assert publisher.pending == 0
    finally:
        publisher.close()


def test_try_confirm_stays_false_while_records_are_unacknowledged() -> None:
    # Nothing listens on this port: the records cannot be delivered.
    publisher = ConfirmedPublisher(
        f"127.0.0.1:{free_tcp_port()}",
        client_id="test-publisher",
        on_retry=lambda: None,
        stop_grace_seconds=0.1,
    )
    try:
        publisher.send(records(3))
        for _ in range(5):
            assert not publisher.try_confirm()
        assert publisher.pending == 3
    finally:
        publisher.close()
