"""The one serde module: Protobuf payloads and the headers every txguard record carries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError

from txguard.schema.v1.decision_pb2 import FraudDecision
from txguard.schema.v1.events_pb2 import TransactionCreated
from txguard.schema.v1.labels_pb2 import FraudLabel
from txguard.schema.v1.watermark_pb2 import StreamWatermark
from txguard.schema.wire import length_delimited

HEADER_EVENT_ID = "txguard-event-id"
HEADER_SCHEMA = "txguard-schema"
HEADER_SCHEMA_VERSION = "txguard-schema-version"
SCHEMA_VERSION = b"1"

# Dead-letter headers: where the record came from and why it could not be processed.
HEADER_DLQ_TOPIC = "txguard-dlq-original-topic"
HEADER_DLQ_PARTITION = "txguard-dlq-original-partition"
HEADER_DLQ_OFFSET = "txguard-dlq-original-offset"
HEADER_DLQ_ERROR = "txguard-dlq-error"
HEADER_DLQ_ERROR_KIND = "txguard-dlq-error-kind"

Headers = tuple[tuple[str, bytes], ...]
# Headers as a consumed record gives them (a value may be None). Per-record code casts to this
# name: spelling the type out in the cast builds it anew on every call, at a cost of microseconds.
ReceivedHeaders = Sequence[tuple[str, bytes | None]] | None


class InvalidEvent(ValueError):
    """A record that cannot be decoded or fails validation; it belongs on the dead-letter topic."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    key: bytes
    value: bytes
    headers: Headers


M = TypeVar("M", TransactionCreated, FraudDecision, FraudLabel, StreamWatermark)

SchemaType = (
    type[TransactionCreated] | type[FraudDecision] | type[FraudLabel] | type[StreamWatermark]
)


def schema_name(message_type: SchemaType) -> str:
    return message_type.DESCRIPTOR.full_name


_WATERMARK_SCHEMA = schema_name(StreamWatermark).encode()
TRANSACTION_SCHEMA_HEADER = (HEADER_SCHEMA, schema_name(TransactionCreated).encode())
SCHEMA_VERSION_HEADER = (HEADER_SCHEMA_VERSION, SCHEMA_VERSION)


def encode_transaction_created(event: TransactionCreated) -> EncodedRecord:
    return EncodedRecord(
        key=event.transaction.account_id.encode(),
        value=event.SerializeToString(),
        headers=_headers(event.event_id, schema_name(TransactionCreated)),
    )


# TransactionCreated's fields: event_id = 1 (string), transaction = 2 (message).
_CREATED_EVENT_ID = b"\x0a"
_CREATED_TRANSACTION = b"\x12"


def encode_transaction_created_from(
    event_id: str, account_id: str, serialized_transaction: bytes
) -> EncodedRecord:
    """`encode_transaction_created` of an event whose Transaction is already serialized: the
    same bytes, written around it (a sub-message is its own serialization, length-prefixed).
    The event id is written even when empty, which the library would leave out: ids never are."""
    return EncodedRecord(
        key=account_id.encode(),
        value=length_delimited(_CREATED_EVENT_ID, event_id.encode())
        + length_delimited(_CREATED_TRANSACTION, serialized_transaction),
        headers=_headers(event_id, schema_name(TransactionCreated)),
    )


def encode_decision(decision: FraudDecision) -> EncodedRecord:
    return EncodedRecord(
        key=decision.account_id.encode(),
        value=decision.SerializeToString(),
        headers=_headers(decision.decision_id, schema_name(FraudDecision)),
    )


def decode_transaction_created(value: bytes | None, headers: ReceivedHeaders) -> TransactionCreated:
    """Decode and check a transactions-topic record; raises InvalidEvent for a poison record."""
    event = parse_transaction_created(value, headers)
    tx = event.transaction
    check_transaction(
        event_id=event.event_id,
        transaction_id=tx.transaction_id,
        account_id=tx.account_id,
        currency=tx.currency,
        amount_minor=tx.amount_minor,
        has_times=tx.HasField("occurred_at") and tx.HasField("accepted_at"),
    )
    return event


def parse_transaction_created(value: bytes | None, headers: ReceivedHeaders) -> TransactionCreated:
    """Decode only: a reader that takes the fields out itself checks them with
    `check_transaction` (reading a field twice costs more than parsing the record)."""
    return _parse(TransactionCreated, value, headers)


def parse_transactions_topic_record(
    value: bytes | None, headers: ReceivedHeaders
) -> TransactionCreated | None:
    """A transactions-topic record: its TransactionCreated, or None for a stream watermark.

    Raises InvalidEvent as `parse_transaction_created` does. The detector reads records with
    exactly the headers txguard writes itself (`feature_batch.decode_rows`); this reads the rest.
    """
    if is_stream_watermark(headers):
        return None
    return parse_transaction_created(value, headers)


def check_transaction(
    *,
    event_id: str,
    transaction_id: str,
    account_id: str,
    currency: str,
    amount_minor: int,
    has_times: bool,
) -> None:
    """What a TransactionCreated must hold to be processed; raises InvalidEvent otherwise."""
    if event_id and transaction_id and account_id and currency and amount_minor >= 0 and has_times:
        return
    if not event_id:
        raise InvalidEvent("invalid", "event_id is empty")
    missing = [
        name
        for name, present in (
            ("transaction_id", transaction_id),
            ("account_id", account_id),
            ("currency", currency),
        )
        if not present
    ]
    if missing:
        raise InvalidEvent("invalid", "transaction lacks " + ", ".join(missing))
    # Zero is a card-verification amount and occurs in historical datasets; the API itself only
    # accepts positive amounts.
    if amount_minor < 0:
        raise InvalidEvent("invalid", "transaction amount_minor must not be negative")
    if not has_times:
        raise InvalidEvent("invalid", "transaction lacks occurred_at or accepted_at")


def encode_fraud_label(label: FraudLabel) -> EncodedRecord:
    return EncodedRecord(
        key=label.account_id.encode(),
        value=label.SerializeToString(),
        headers=_headers(label.label_id, schema_name(FraudLabel)),
    )


def encode_stream_watermark(watermark: StreamWatermark) -> EncodedRecord:
    """A watermark record; its producer sends one copy to every partition explicitly."""
    return EncodedRecord(
        key=b"",
        value=watermark.SerializeToString(),
        headers=_headers("", schema_name(StreamWatermark)),
    )


def is_stream_watermark(headers: ReceivedHeaders) -> bool:
    return header_value(headers, HEADER_SCHEMA) == _WATERMARK_SCHEMA


def decode_stream_watermark(value: bytes | None, headers: ReceivedHeaders) -> StreamWatermark:
    watermark = _parse(StreamWatermark, value, headers)
    if not watermark.HasField("complete_until"):
        raise InvalidEvent("invalid", "watermark lacks complete_until")
    return watermark


def decode_fraud_label(value: bytes | None, headers: ReceivedHeaders) -> FraudLabel:
    label = _parse(FraudLabel, value, headers)
    if not label.transaction_id or not label.terminal_id:
        raise InvalidEvent("invalid", "label lacks transaction_id or terminal_id")
    if not label.HasField("occurred_at") or not label.HasField("known_at"):
        raise InvalidEvent("invalid", "label lacks occurred_at or known_at")
    return label


def decode_decision(value: bytes | None, headers: ReceivedHeaders) -> FraudDecision:
    decision = _parse(FraudDecision, value, headers)
    if not decision.decision_id or not decision.transaction_id:
        raise InvalidEvent("invalid", "decision lacks decision_id or transaction_id")
    return decision


def header_value(headers: ReceivedHeaders, name: str) -> bytes | None:
    for key, value in headers or ():
        if key == name:
            return value
    return None


def dead_letter_headers(
    original: ReceivedHeaders,
    *,
    topic: str,
    partition: int,
    offset: int,
    error: InvalidEvent,
) -> list[tuple[str, bytes]]:
    """The original headers plus where the record came from and why it was rejected."""
    kept = [(k, v) for k, v in (original or ()) if v is not None]
    return [
        *kept,
        (HEADER_DLQ_TOPIC, topic.encode()),
        (HEADER_DLQ_PARTITION, str(partition).encode()),
        (HEADER_DLQ_OFFSET, str(offset).encode()),
        (HEADER_DLQ_ERROR_KIND, error.kind.encode()),
        (HEADER_DLQ_ERROR, str(error).encode()[:1000]),
    ]


def _headers(event_id: str, schema: str) -> Headers:
    return (
        (HEADER_EVENT_ID, event_id.encode()),
        (HEADER_SCHEMA, schema.encode()),
        (HEADER_SCHEMA_VERSION, SCHEMA_VERSION),
    )


def _parse(message_type: type[M], value: bytes | None, headers: ReceivedHeaders) -> M:
    """The record's message, once its schema headers name `message_type`."""
    _require_schema(headers, schema_name(message_type))
    message = message_type()
    try:
        message.ParseFromString(value or b"")
    except DecodeError as exc:
        raise InvalidEvent("undecodable", f"not a {message_type.__name__} message: {exc}") from exc
    return message


def _require_schema(headers: ReceivedHeaders, expected: str) -> None:
    found = header_value(headers, HEADER_SCHEMA)
    if found is None:
        raise InvalidEvent("missing-schema", f"record has no {HEADER_SCHEMA} header")
    if found.decode(errors="replace") != expected:
        raise InvalidEvent(
            "wrong-schema", f"expected schema {expected}, got {found.decode(errors='replace')}"
        )
    version = header_value(headers, HEADER_SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise InvalidEvent("wrong-schema", f"unsupported schema version {version!r}")
