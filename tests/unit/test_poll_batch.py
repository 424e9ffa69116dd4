"""poll_batch's rule for partitions given up while it gathers a batch, call by call.

librdkafka serves rebalance callbacks inside `consume()`; the scripted consumer here runs a
rebalance before it returns a call's records, as a callback served inside that call would.
(`tests/integration/test_consumer_loop.py` shows the same against a real broker.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import Consumer, TopicPartition

from txguard.kafka.consumer_loop import Subscription, poll_batch

TOPIC = "transactions"


@dataclass
class Record:
    _partition: int
    _offset: int

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def error(self) -> None:
        return None


Step = tuple[Callable[["ScriptedConsumer"], None] | None, list[Record]]


@dataclass
class ScriptedConsumer:
    subscription: Subscription
    steps: list[Step]
    assigned: set[int] = field(default_factory=lambda: {0, 1})
    calls: int = 0

    def consume(self, num_messages: int, timeout: float) -> list[Record]:
        self.calls += 1
        rebalance, records = self.steps.pop(0) if self.steps else (None, [])
        if rebalance is not None:
            rebalance(self)
        return records[:num_messages]

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, partition) for partition in sorted(self.assigned)]


def give_up(*partitions: int) -> Callable[[ScriptedConsumer], None]:
    def rebalance(consumer: ScriptedConsumer) -> None:
        consumer.subscription.record([TopicPartition(TOPIC, p) for p in partitions])
        consumer.assigned -= set(partitions)

    return rebalance


def give_up_and_get_back(*partitions: int) -> Callable[[ScriptedConsumer], None]:
    def rebalance(consumer: ScriptedConsumer) -> None:
        give_up(*partitions)(consumer)
        consumer.assigned |= set(partitions)

    return rebalance


def records(partition: int, *offsets: int) -> list[Record]:
    return [Record(partition, offset) for offset in offsets]


def poll(consumer: ScriptedConsumer, max_messages: int = 100, **kwargs: Any) -> list[Any]:
    batch = poll_batch(
        cast(Consumer, consumer),
        max_messages,
        1.0,
        subscription=consumer.subscription,
        **kwargs,
    )
    return [(r.partition(), r.offset()) for r in batch]


def test_records_in_hand_of_a_partition_revoked_while_the_batch_lingers_are_dropped() -> None:
    consumer = ScriptedConsumer(
        Subscription(),
        [(None, records(0, 5, 6) + records(1, 7, 8)), (give_up(1), records(0, 9))],
    )
    assert poll(consumer, linger=0.5) == [(0, 5), (0, 6), (0, 9)]


def test_a_partition_back_before_the_batch_completes_keeps_only_what_came_after() -> None:
    # In hand before the revoke: read again from the committed offset once it is back, so
    # dropped; what the call returned after the partition came back is kept.
    consumer = ScriptedConsumer(
        Subscription(),
        [(None, records(1, 7, 8)), (give_up_and_get_back(1), records(1, 3, 4))],
    )
    assert poll(consumer) == [(1, 3), (1, 4)]


def test_a_full_first_call_drops_a_partition_lost_inside_it() -> None:
    consumer = ScriptedConsumer(Subscription(), [(give_up(1), records(0, 1) + records(1, 2, 3))])
    assert poll(consumer, max_messages=3) == [(0, 1)]
    assert consumer.calls == 1  # Full: no call for more.


def test_a_partition_revoked_and_back_inside_one_call_is_kept() -> None:
    consumer = ScriptedConsumer(Subscription(), [(give_up_and_get_back(1), records(1, 2, 3))])
    assert poll(consumer, max_messages=2) == [(1, 2), (1, 3)]


def test_a_rebalance_of_an_earlier_batch_drops_nothing_from_this_one() -> None:
    subscription = Subscription()
    subscription.record([TopicPartition(TOPIC, 1)])
    consumer = ScriptedConsumer(subscription, [(None, records(1, 4)), (None, [])])
    consumer.assigned = {1}  # Revoked before this batch, then assigned again.
    assert poll(consumer) == [(1, 4)]


def test_without_a_subscription_nothing_is_dropped() -> None:
    consumer = ScriptedConsumer(
        Subscription(), [(None, records(1, 7)), (give_up(1), records(0, 9))]
    )
    batch = poll_batch(cast(Consumer, consumer), 100, 1.0)
    assert [(r.partition(), r.offset()) for r in batch] == [(1, 7), (0, 9)]
