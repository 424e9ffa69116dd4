"""What the detector makes of each record on the transactions topic, before any feature work."""

from __future__ import annotations

from typing import cast

import pytest
from confluent_kafka import Message

from txguard.fraud.feature_batch import TransactionRow, decode_rows
from txguard.kafka.serde import (
    HEADER_EVENT_ID,
    HEADER_SCHEMA,
    HEADER_SCHEMA_VERSION,
    InvalidEvent,
    ReceivedHeaders,
    parse_transactions_topic_record,
)
from txguard.schema.v1.events_pb2 import TransactionCreated
from txguard.schema.v1.watermark_pb2 import StreamWatermark

EVENT = TransactionCreated(event_id="e-1")
EVENT.transaction.transaction_id = "t-1"
VALUE = EVENT.SerializeToString()
TRANSACTION = b"txguard.v1.TransactionCreated"


def headers(schema: bytes | None = TRANSACTION, version: bytes | None = b"1") -> ReceivedHeaders:
    found: list[tuple[str, bytes | None]] = [(HEADER_EVENT_ID, b"e-1")]
    if schema is not None:
        found.append((HEADER_SCHEMA, schema))
    if version is not None:
        found.append((HEADER_SCHEMA_VERSION, version))
    return found


def kind_of(value: bytes | None, record_headers: ReceivedHeaders) -> str:
    with pytest.raises(InvalidEvent) as raised:
        parse_transactions_topic_record(value, record_headers)
    return raised.value.kind


def test_a_transaction_record_is_parsed() -> None:
    assert parse_transactions_topic_record(VALUE, headers()) == EVENT


def test_a_watermark_is_none() -> None:
    watermark = StreamWatermark().SerializeToString()
    assert (
        parse_transactions_topic_record(watermark, headers(b"txguard.v1.StreamWatermark")) is None
    )


def test_records_that_are_not_current_transactions_are_rejected_by_kind() -> None:
    assert kind_of(VALUE, headers(schema=None)) == "missing-schema"
    assert kind_of(VALUE, None) == "missing-schema"
    assert kind_of(VALUE, headers(b"txguard.v1.FraudLabel")) == "wrong-schema"
    assert kind_of(VALUE, headers(version=b"2")) == "wrong-schema"
    assert kind_of(VALUE, headers(version=None)) == "wrong-schema"
    assert kind_of(b"\xff\xff\xff", headers()) == "undecodable"


def test_with_a_header_twice_the_first_one_counts() -> None:
    wrong_first = [(HEADER_SCHEMA, b"txguard.v1.FraudLabel"), *(headers() or [])]
    assert kind_of(VALUE, wrong_first) == "wrong-schema"
    right_first = [*(headers() or []), (HEADER_SCHEMA, b"txguard.v1.FraudLabel")]
    assert parse_transactions_topic_record(VALUE, right_first) == EVENT


def full_event(event_id: str, *, amount_minor: int = 1_250) -> TransactionCreated:
    event = TransactionCreated(event_id=event_id)
    tx = event.transaction
    tx.transaction_id, tx.account_id, tx.currency = f"t-{event_id}", "acct-1", "EUR"
    tx.amount_minor, tx.terminal_id = amount_minor, "term-9"
    tx.occurred_at.FromMilliseconds(1_700_000_000_123)
    tx.accepted_at.FromMicroseconds(1_700_000_000_456_789)
    return event


def record(
    partition: int, value: bytes, record_headers: ReceivedHeaders, offset: int = 0
) -> Message:
    as_list: list[tuple[str, str | bytes | None]] | None = (
        None if record_headers is None else list(record_headers)
    )
    return Message(topic="tx", partition=partition, offset=offset, value=value, headers=as_list)


def test_decode_rows_reads_usual_records_itself_and_hands_the_rest_to_the_fallback() -> None:
    usual = [full_event(f"e-{n}") for n in range(3)]
    watermark = StreamWatermark().SerializeToString()
    reordered = [(HEADER_SCHEMA, TRANSACTION), (HEADER_EVENT_ID, b"e-x"), *(headers() or [])[2:]]
    records = [
        record(2, usual[0].SerializeToString(), headers()),
        record(2, watermark, headers(b"txguard.v1.StreamWatermark")),
        # Valid, but not in the header layout txguard writes: the general way reads it.
        record(2, full_event("e-x").SerializeToString(), reordered),
        record(2, usual[1].SerializeToString(), headers()),
        record(2, b"\xff\xff\xff", headers()),  # undecodable
        record(2, full_event("e-neg", amount_minor=-1).SerializeToString(), headers()),
        record(2, usual[2].SerializeToString(), headers()),
    ]
    records = [
        record(2, r.value() or b"", cast(ReceivedHeaders, r.headers()), offset=100 + index)
        for index, r in enumerate(records)
    ]
    handed: list[bytes | None] = []

    def fallback(message: Message) -> TransactionRow | None:
        handed.append(message.value())
        try:
            event = parse_transactions_topic_record(
                message.value(), cast(ReceivedHeaders, message.headers())
            )
            offset = cast(int, message.offset())
            return None if event is None else TransactionRow.of(2, event, offset=offset)
        except InvalidEvent:
            return None

    rows = decode_rows(records, fallback)

    assert handed == [records[i].value() for i in (1, 2, 4, 5)]
    expected = [usual[0], full_event("e-x"), usual[1], usual[2]]
    assert rows == [
        TransactionRow.of(2, event, offset=offset)
        for event, offset in zip(expected, [100, 102, 103, 106], strict=True)
    ]
    assert rows[0].occurred_ms == 1_700_000_000_123
    assert rows[0].accepted_seconds == pytest.approx(1_700_000_000.456789)
    assert rows[0].occurred_at == usual[0].transaction.occurred_at.SerializeToString()
