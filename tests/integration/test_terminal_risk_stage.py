"""A terminal-risk stage against a real broker: a consumer kept out of its group is replaced."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from tests.support import OtherProtocolMember, new_transaction, running_in_thread, wait_until
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
        item = new_transaction(f"stage-{uuid.uuid4().hex[:10]}")
        encoded = serde.encode_transaction_created(
            TransactionCreated(event_id=str(uuid.uuid4()), transaction=item.transaction)
        )
        producer.produce(
            settings.topics.transactions,
            key=encoded.key,
            value=encoded.value,
            headers=list(encoded.headers),
        )
        assert producer.flush(30) == 0
        wait_until(lambda: stage.stats.consumed > 0)
