"""Whether a topic was deleted and created again under the same name, told by its topic id.

A consumer is not told. Kafka drops the group's committed offsets with the old topic, but a
running consumer keeps its position: where the new topic ends below it, librdkafka finds the
position out of range and starts the partition again from its beginning; where the new topic has
grown past it before the next fetch, the consumer goes on from there and never sees the records
below it. Neither is a rebalance. The topic id, which Kafka gives every topic at its creation,
tells. `TopicIdentity` holds, per input topic of a loop, the id the loop reads it as:

- it asks the cluster for the topics' ids every `CHECK_SECONDS` without blocking the loop
  (`check`), which reads a topic whose id changed from its start (`read_from_start`); only once
  every partition it holds has moved there is the new id the one it reads the topic as;
- every offset the loop commits carries that id as its metadata (`stamped`), and on assignment a
  partition whose committed offset carries another id starts from its beginning
  (`start_positions`): an offset committed for the old topic by a loop that had not noticed the
  change yet (Kafka refuses commits to a topic that does not exist, but not to its successor)
  says nothing of the new one.

The same answers give each topic's partition count (`partitions`), for the topics a loop reads
and for the others whose count it depends on (`counted`): partitions added to a topic (kafka-topics
--alter) reach a consumer only at librdkafka's next metadata refresh, up to five minutes later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace

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
# topic's records wait about this long to be read, longer while the cluster does not answer.
CHECK_SECONDS = 5.0
# How long one question may take before it is asked again.
REQUEST_TIMEOUT_SECONDS = 10.0
# A recreated topic whose partitions could not all be moved to their start is handled again after
# this long (librdkafka refuses a seek while a partition is not being fetched).
MOVE_RETRY_SECONDS = 0.5


@dataclass(frozen=True)
class TopicRecreated:
    """The topic is not the one the loop reads it as: its id changed."""

    topic: str
    old_id: str
    new_id: str
    partitions: int  # the new topic's partition count
    # Handled before, but some partition could not be moved to its start then.
    again: bool = False


class TopicIdentity:
    """Follows the ids of a loop's input topics; `check()`, called by the loop between batches,
    never waits."""

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        *,
        counted: Sequence[str] = (),
        check_seconds: float = CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`topics`: the loop's input topics, followed by id and partition count; `counted`:
        other topics followed by partition count only."""
        self.topics = list(topics)
        self.counted = [topic for topic in counted if topic not in self.topics]
        self.check_seconds = check_seconds
        self._bootstrap = bootstrap
        self._clock = clock
        self._admin: AdminClient | None = None  # made at the first question
        self._asking: dict[str, Future[TopicDescription]] = {}
        self._asked_at = float("-inf")
        # The id each topic is read as: the first known, then each new one once read from start.
        self._ids: dict[str, str] = {}
        # Recreations reported and not yet read from their start in full, and when to try again.
        self._pending: dict[str, tuple[TopicRecreated, float]] = {}
        # The latest partition count the cluster gave for each topic followed.
        self._partitions: dict[str, int] = {}

    def topic_id(self, topic: str) -> str | None:
        """The id the loop reads the topic as (None before it is known)."""
        return self._ids.get(topic)

    def partitions(self, topic: str) -> int | None:
        """The topic's partition count in the cluster's latest answer (None before one)."""
        return self._partitions.get(topic)

    def learn(self, *, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        """Ask for the topics' ids now and take them as the ones read (before consuming): the
        offsets and states written from the start then carry them. Without an answer (logged),
        the first answer of `check` gives them."""
        try:
            for topic in self.topics:
                self._ids.setdefault(topic, self.current(topic, timeout=timeout))
        except (KafkaException, TimeoutError) as exc:
            log.warning("ids of %s not known yet (%s)", self.topics, exc)

    def check(self) -> list[TopicRecreated]:
        """The recreated topics the loop is to read from their start: those whose id changed
        since the last call, and again those whose partitions were not all moved last time."""
        changes = [change for change in self._answered() if change.topic not in self._pending]
        now = self._clock()
        for change in changes:
            self._pending[change.topic] = (change, now)
        again = [
            change
            for change, retry_at in self._pending.values()
            if change.again and retry_at <= now and change not in changes
        ]
        return changes + again

    def read_from_start(
        self, consumer: Consumer, recreated: TopicRecreated, *, what: str
    ) -> list[TopicPartition]:
        """Move the consumer to the beginning of each partition it holds of the recreated topic;
        those partitions. Once all moved, the new id is the one the topic is read as; a partition
        librdkafka would not move yet (not being fetched: its offset being looked up after the
        topic came back, say) makes `check` hand the recreation back a little later."""
        topic = recreated.topic
        held = [partition for partition in consumer.assignment() if partition.topic == topic]
        if not recreated.again:
            log.warning(
                "%s: %s was deleted and created again (topic id %s, before %s); partitions %s "
                "are read again from their beginning",
                what,
                topic,
                recreated.new_id,
                recreated.old_id,
                [partition.partition for partition in held],
            )
        unmoved = _move_to_start(consumer, held)
        if unmoved:
            retry_at = self._clock() + MOVE_RETRY_SECONDS
            self._pending[topic] = (replace(recreated, again=True), retry_at)
        else:
            self._pending.pop(topic, None)
            self._ids[topic] = recreated.new_id
        return held

    def stamped(self, offsets: Sequence[TopicPartition]) -> list[TopicPartition]:
        """The offsets to commit, each carrying the id its topic is read as (as its metadata)."""
        return [
            TopicPartition(o.topic, o.partition, o.offset, metadata=self._ids.get(o.topic, ""))
            for o in offsets
        ]

    def start_positions(
        self, consumer: Consumer, partitions: Sequence[TopicPartition], *, what: str
    ) -> list[TopicPartition] | None:
        """On assignment: where the partitions start when a committed offset carries another id
        than its topic's now (logged): those from their beginning, the others from their
        committed offset. None when every committed offset is the topic's (or cannot be read)."""
        try:
            committed = consumer.committed(list(partitions), timeout=REQUEST_TIMEOUT_SECONDS)
            now = {topic: self.current(topic) for topic in {p.topic for p in committed}}
        except (KafkaException, TimeoutError) as exc:
            log.warning("%s: committed offsets not checked against the topic ids (%s)", what, exc)
            return None
        stale = {
            (p.topic, p.partition)
            for p in committed
            if p.offset >= 0 and p.metadata and p.metadata != now[p.topic]
        }
        if not stale:
            return None
        log.warning(
            "%s: the committed offsets of %s count in topics since deleted and created again; "
            "those partitions are read from their beginning",
            what,
            sorted(stale),
        )
        return [
            TopicPartition(p.topic, p.partition, OFFSET_BEGINNING)
            if (p.topic, p.partition) in stale
            else TopicPartition(p.topic, p.partition)
            for p in partitions
        ]

    def current(self, topic: str, *, timeout: float = REQUEST_TIMEOUT_SECONDS) -> str:
        """The topic's id now, asked and awaited (its partition count noted); raises
        KafkaException or TimeoutError when the cluster does not say."""
        asked = self._client().describe_topics(TopicCollection([topic]), request_timeout=timeout)
        description = asked[topic].result(timeout=timeout)
        self._count(topic, description)
        return str(description.topic_id)

    def close(self) -> None:
        """Destroy the client; answers still awaited are dropped."""
        self._asking = {}
        if self._admin is not None:
            self._admin.__exit__(None, None, None)
            self._admin = None

    def _answered(self) -> list[TopicRecreated]:
        """Ask when it is time; the changes an answer complete since shows."""
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

    def _ask(self) -> None:
        self._asked_at = self._clock()
        try:
            self._asking = self._client().describe_topics(
                TopicCollection(self.topics + self.counted),
                request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except KafkaException as exc:
            log.debug("could not ask about %s: %s", self.topics + self.counted, exc)

    def _compare(self, topic: str, answer: Future[TopicDescription]) -> TopicRecreated | None:
        """Note the answer's partition count; the recreation it shows, if any."""
        try:
            description = answer.result()
        except KafkaException as exc:
            # Mostly an unknown topic (between its deletion and its creation) or an outage.
            log.debug("topic id of %s not known: %s", topic, exc)
            return None
        self._count(topic, description)
        if topic not in self.topics:
            return None  # counted only
        topic_id = str(description.topic_id)
        known = self._ids.setdefault(topic, topic_id)
        if known == topic_id:
            return None
        return TopicRecreated(topic, known, topic_id, len(description.partitions))

    def _count(self, topic: str, description: TopicDescription) -> None:
        # A topic has at least one partition; an answer without any says nothing of its count.
        if description.partitions:
            self._partitions[topic] = len(description.partitions)

    def _client(self) -> AdminClient:
        if self._admin is None:
            self._admin = make_admin(self._bootstrap, client_id="txguard-topic-identity")
        return self._admin


def _move_to_start(consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
    """Seek each partition to its beginning; those librdkafka would not move yet."""
    unmoved: list[TopicPartition] = []
    for partition in partitions:
        try:
            consumer.seek(TopicPartition(partition.topic, partition.partition, OFFSET_BEGINNING))
        except KafkaException as exc:
            log.debug(
                "%s [%d] not moved to its start yet: %s", partition.topic, partition.partition, exc
            )
            unmoved.append(partition)
    return unmoved
