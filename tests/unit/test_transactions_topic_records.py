"""What the detector makes of each record on the transactions topic, before any feature work."""

from __future__ import annotations

import pytest

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
