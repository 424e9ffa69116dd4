"""Whether a topic was deleted and created again under the same name, told by its topic id.

A consumer is not told. Kafka drops the group's committed offsets with the old topic, but a
running consumer keeps its position: where the new topic ends below it, librdkafka finds the
position out of range and starts the partition again from its beginning; where the new topic has
grown past it before the next fetch, the consumer goes on from there and never sees the records
below it. Neither is a rebalance. The topic id, which Kafka gives every topic at its creation,
tells: `TopicIdentity` asks the cluster for the ids of a loop's input topics every
`CHECK_SECONDS`, without blocking the loop that asks, and reports each new one once; the loop
then reads the new topic from its start (`TopicIdentity.read_from_start`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, TopicDescription

from txguard.kafka.clients import make_admin

log = logging.getLogger(__name__)

# How often the topic ids are asked for: a metadata request, nothing for the broker; a recreated
# topic's records wait at most about this long to be read.
CHECK_SECONDS = 5.0
# How long one question may take before it is asked again.
REQUEST_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class TopicRecreated:
    """The topic is not the one seen before: its id changed."""

    topic: str
    old_id: str
    new_id: str
    partitions: int  # the new topic's partition count


class TopicIdentity:
    """Follows the ids of a loop's input topics; `check(consumer)`, called by the loop between
    batches, never waits.

    The first id the cluster gives for a topic is the one later ones are compared with. A topic
    that does not exist for a while (deleted, not yet created again) changes nothing until it is
    back.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        *,
        check_seconds: float = CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topics = list(topics)
        self.check_seconds = check_seconds
        self._clock = clock
        self._admin: AdminClient = make_admin(bootstrap, client_id="txguard-topic-identity")
        self._asking: dict[str, Future[TopicDescription]] = {}
        self._asked_at = float("-inf")
        self._ids: dict[str, str] = {}
        # Partitions of a recreated topic that the consumer could not move to their start yet.
        self._unmoved: list[TopicPartition] = []

    def topic_id(self, topic: str) -> str | None:
        """The id the topic had at the latest answer (None before the first)."""
        return self._ids.get(topic)

    def check(self, consumer: Consumer) -> list[TopicRecreated]:
        """Called by the loop between batches: moves to their start the partitions a seek could
        not move before, and returns the topics found recreated since the last call."""
        if self._unmoved:
            self._unmoved = _move_to_start(consumer, self._unmoved)
        return self.recreated()

    def read_from_start(
        self, consumer: Consumer, recreated: TopicRecreated, *, what: str
    ) -> list[TopicPartition]:
        """Move the consumer to the beginning of each partition it holds of the recreated topic
        (logged at WARNING); those partitions. librdkafka refuses a seek while a partition is not
        being fetched (its offset being looked up after the topic came back, say): such a
        partition is moved at a later `check`."""
        topic = recreated.topic
        held = [partition for partition in consumer.assignment() if partition.topic == topic]
        log.warning(
            "%s: %s was deleted and created again (topic id %s, before %s); partitions %s are "
            "read again from their beginning",
            what,
            topic,
            recreated.new_id,
            recreated.old_id,
            [partition.partition for partition in held],
        )
        self._unmoved = [p for p in self._unmoved if p.topic != topic]
        self._unmoved += _move_to_start(consumer, held)
        return held

    def recreated(self) -> list[TopicRecreated]:
        """The topics whose latest answer gave a new id, each reported once; may ask again."""
        if not self._asking:
            if self._clock() - self._asked_at >= self.check_seconds:
                self._ask()
            return []
        if not all(future.done() for future in self._asking.values()):
            if self._clock() - self._asked_at >= REQUEST_TIMEOUT_SECONDS:
                self._asking = {}  # lost in an outage: ask again at the next call
            return []
        answers, self._asking = self._asking, {}
        return [
            change
            for topic, future in answers.items()
            if (change := self._compare(topic, future)) is not None
        ]

    def current(self, topic: str, *, timeout: float = REQUEST_TIMEOUT_SECONDS) -> str:
        """The topic's id now, asked and awaited; raises KafkaException or TimeoutError when the
        cluster does not say. Only the first id known becomes the one `recreated()` compares
        with: a change is still reported there, once."""
        asked = self._admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)
        topic_id = str(asked[topic].result(timeout=timeout).topic_id)
        self._ids.setdefault(topic, topic_id)
        return topic_id

    def close(self) -> None:
        """Destroy the client; answers still awaited are dropped."""
        self._asking = {}
        self._admin.__exit__(None, None, None)

    def _ask(self) -> None:
        self._asked_at = self._clock()
        try:
            self._asking = self._admin.describe_topics(
                TopicCollection(self.topics), request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        except KafkaException as exc:
            log.debug("could not ask for the ids of %s: %s", self.topics, exc)

    def _compare(self, topic: str, answer: Future[TopicDescription]) -> TopicRecreated | None:
        try:
            description = answer.result()
        except KafkaException as exc:
            # Mostly an unknown topic (between its deletion and its creation) or an outage.
            log.debug("topic id of %s not known: %s", topic, exc)
            return None
        topic_id = str(description.topic_id)
        previous = self._ids.get(topic)
        self._ids[topic] = topic_id
        if previous is None or previous == topic_id:
            return None
        return TopicRecreated(topic, previous, topic_id, len(description.partitions))


def _move_to_start(consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
    """Seek each partition the consumer still holds to its beginning; those it could not."""
    held = {(p.topic, p.partition) for p in consumer.assignment()}
    unmoved: list[TopicPartition] = []
    for partition in partitions:
        if (partition.topic, partition.partition) not in held:
            continue  # revoked meanwhile: its next owner starts from the committed offset
        try:
            consumer.seek(TopicPartition(partition.topic, partition.partition, OFFSET_BEGINNING))
        except KafkaException as exc:
            log.debug(
                "%s [%d] not moved to its start yet: %s", partition.topic, partition.partition, exc
            )
            unmoved.append(partition)
    return unmoved
