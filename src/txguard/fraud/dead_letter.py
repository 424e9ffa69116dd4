"""Dead-lettering: a record that cannot be processed goes to the DLQ topic as it came, with headers
saying where it came from (topic, partition, offset) and why (error kind and message)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from confluent_kafka import Message

from txguard.kafka.serde import InvalidEvent, ReceivedHeaders, dead_letter_headers


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The raw record, unchanged, and the headers to publish it with."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    error: InvalidEvent
    topic: str


def dead_letter_for(message: Message, error: InvalidEvent, *, topic: str) -> DeadLetter:
    """The DLQ record for a consumed record that failed decoding or validation."""
    original = cast(ReceivedHeaders, message.headers())
    partition, offset = message.partition(), message.offset()
    return DeadLetter(
        key=message.key(),
        value=message.value(),
        headers=dead_letter_headers(
            original,
            topic=message.topic() or "",
            partition=-1 if partition is None else partition,
            offset=-1 if offset is None else offset,
            error=error,
        ),
        error=error,
        topic=topic,
    )
