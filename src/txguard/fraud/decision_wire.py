"""FraudDecision records written straight in Protobuf's wire format, a batch at a time.

The detector publishes one decision per transaction. Building each one as a protobuf object and
then serialising it cost more than all its feature work; `DecisionWriter` writes the same
message field by field instead: fields in number order, proto3 defaults (empty strings, zero
numbers) left out, as the protobuf library writes them. What stays the same for a whole batch
(model and rules versions, decision time) is encoded once per batch.
`build_decision` remains the definition of a decision: tests/unit/test_decision_wire.py checks
that the protobuf library parses these bytes into exactly the message `build_decision` builds.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from txguard.fraud import _per_record
from txguard.fraud.feature_batch import TransactionRow
from txguard.fraud.features import ALL_FEATURES
from txguard.fraud.scoring import ScoreResult
from txguard.kafka.consumer_loop import OutgoingRecord
from txguard.kafka.serde import (
    HEADER_EVENT_ID,
    HEADER_SCHEMA,
    HEADER_SCHEMA_VERSION,
    SCHEMA_VERSION,
)
from txguard.schema.ids import new_random_ascii_ids
from txguard.schema.v1.decision_pb2 import FraudDecision
from txguard.schema.wire import length_delimited, varint

_DOUBLE = struct.Struct("<d")
_SCHEMA = FraudDecision.DESCRIPTOR.full_name.encode()

# Tags: field number << 3 | wire type (0 varint, 1 64-bit, 2 length-delimited).
_DECISION_ID = b"\x0a"
_EVENT_ID = b"\x12"
_TRANSACTION_ID = b"\x1a"
_ACCOUNT_ID = b"\x22"
_SCORE = b"\x29"
_OUTCOME = b"\x30"
_REASON = b"\x3a"
_MODEL_VERSION = b"\x42"
_RULES_VERSION = b"\x4a"
_DECIDED_AT = b"\x52"
_ACCEPTED_AT = b"\x5a"
_OCCURRED_AT = b"\x62"
_FEATURE = b"\x6a"
_SHADOW_SCORE = b"\x71"
_SHADOW_MODEL_VERSION = b"\x7a"
# Inside a Reason: code, description, contribution; inside a Timestamp: seconds, nanos; inside
# a map entry: key, value.
_FIELD_1_BYTES = b"\x0a"
_FIELD_2_BYTES = b"\x12"
_FIELD_3_DOUBLE = b"\x19"
_FIELD_1_VARINT = b"\x08"
_FIELD_2_VARINT = b"\x10"
_FIELD_2_DOUBLE = b"\x11"


def _string(tag: bytes, text: str) -> bytes:
    """A string field, or nothing for the empty string (proto3's default)."""
    if not text:
        return b""
    return length_delimited(tag, text.encode())


def _double(tag: bytes, number: float) -> bytes:
    return tag + _DOUBLE.pack(number) if number else b""


def _timestamp(tag: bytes, seconds: int, nanos: int) -> bytes:
    body = (_FIELD_1_VARINT + varint(seconds) if seconds else b"") + (
        _FIELD_2_VARINT + varint(nanos) if nanos else b""
    )
    return length_delimited(tag, body)


_REASON_CODES: dict[str, bytes] = {}
# A whole reason in one step: its tag and length, code, description and contribution.
_REASON_FORMAT = _REASON + b"%c%b" + _FIELD_2_BYTES + b"%c%b" + _FIELD_3_DOUBLE + b"%b"


def _reason(code: str, description: str, contribution: float) -> bytes:
    # Codes come from a small fixed set (rules, features): each is encoded once.
    encoded_code = _REASON_CODES.get(code)
    if encoded_code is None:
        encoded_code = _REASON_CODES[code] = _string(_FIELD_1_BYTES, code)
    text = description.encode()
    # The body: the code, 2 + len(text) bytes of description, 9 of contribution.
    size = len(encoded_code) + len(text) + 11
    if contribution and text and size < 0x80:
        # The usual reason: every part present, every length one byte.
        return _REASON_FORMAT % (size, encoded_code, len(text), text, _DOUBLE.pack(contribution))
    body = encoded_code + length_delimited(_FIELD_2_BYTES, text) if text else encoded_code
    if contribution:
        body += _FIELD_3_DOUBLE + _DOUBLE.pack(contribution)
    return length_delimited(_REASON, body)


_FEATURE_KEYS = [_string(_FIELD_1_BYTES, name) for name in ALL_FEATURES]


def _features(values: Sequence[float]) -> bytes:
    """The features map, one entry per feature (key and value both written, as for any map)."""
    parts = []
    for key, value in zip(_FEATURE_KEYS, values, strict=True):
        body = key + _FIELD_2_DOUBLE + _DOUBLE.pack(value)
        parts.append(length_delimited(_FEATURE, body))
    return b"".join(parts)


# Fields 1 to 12 of a decision: its id (32 characters), the transaction's ids, the score, the
# outcome, the reasons, the versions and decision time, and the transaction's two Timestamps
# (at most 17 bytes each, so their lengths are one byte).
_DECISION_FORMAT = (
    _DECISION_ID + b"\x20%b%b%b%b%b%b" + _ACCEPTED_AT + b"%c%b" + _OCCURRED_AT + b"%c%b"
)


def _ids(event_id: bytes, transaction_id: bytes, account_id: bytes) -> bytes:
    """Fields 2 to 4: the event, transaction and account ids (empty ones left out)."""
    if 0 < len(event_id) < 0x80 and 0 < len(transaction_id) < 0x80 and 0 < len(account_id) < 0x80:
        return b"\x12%c%b\x1a%c%b\x22%c%b" % (
            len(event_id),
            event_id,
            len(transaction_id),
            transaction_id,
            len(account_id),
            account_id,
        )
    return b"".join(
        length_delimited(tag, value)
        for tag, value in (
            (_EVENT_ID, event_id),
            (_TRANSACTION_ID, transaction_id),
            (_ACCOUNT_ID, account_id),
        )
        if value
    )


_SCHEMA_HEADERS = ((HEADER_SCHEMA, _SCHEMA), (HEADER_SCHEMA_VERSION, SCHEMA_VERSION))


def _versions_and_time(model_version: str, rules_version: str, decided_at_us: int) -> bytes:
    """Fields 8 to 10, the same for a whole batch."""
    decided_seconds, decided_micros = divmod(decided_at_us, 1_000_000)
    return (
        _string(_MODEL_VERSION, model_version)
        + _string(_RULES_VERSION, rules_version)
        + _timestamp(_DECIDED_AT, decided_seconds, decided_micros * 1000)
    )


class DecisionWriter:
    """Encodes a batch's decisions as records for the decisions topic."""

    def __init__(self, topic: str) -> None:
        self.topic = topic

    def records(
        self,
        rows: Sequence[TransactionRow],
        results: Sequence[ScoreResult],
        outcomes: Sequence[int],
        *,
        model_version: str,
        rules_version: str,
        decided_at_us: int,
        shadow_model_version: str = "",
        features: Sequence[Sequence[float]] | None = None,
    ) -> list[OutgoingRecord]:
        """One record per row: key = account id, value = the FraudDecision, txguard headers.

        Without features, the C extension `txguard.fraud._per_record` writes them, byte for byte as
        `records_in_python` does."""
        if features is not None:
            return self.records_in_python(
                rows,
                results,
                outcomes,
                model_version=model_version,
                rules_version=rules_version,
                decided_at_us=decided_at_us,
                shadow_model_version=shadow_model_version,
                features=features,
            )
        return _per_record.encode_decisions(
            rows,
            results,
            outcomes,
            new_random_ascii_ids(len(rows)),
            _versions_and_time(model_version, rules_version, decided_at_us),
            _string(_SHADOW_MODEL_VERSION, shadow_model_version),
            self.topic,
            OutgoingRecord,
            HEADER_EVENT_ID,
            _SCHEMA_HEADERS,
        )

    def records_in_python(
        self,
        rows: Sequence[TransactionRow],
        results: Sequence[ScoreResult],
        outcomes: Sequence[int],
        *,
        model_version: str,
        rules_version: str,
        decided_at_us: int,
        shadow_model_version: str = "",
        features: Sequence[Sequence[float]] | None = None,
    ) -> list[OutgoingRecord]:
        """`records`, written field by field in Python (the definition the C extension follows)."""
        versions_and_time = _versions_and_time(model_version, rules_version, decided_at_us)
        shadow_version = _string(_SHADOW_MODEL_VERSION, shadow_model_version)
        topic = self.topic
        schema_headers = _SCHEMA_HEADERS
        outcome_fields = {
            outcome: _OUTCOME + varint(outcome) for outcome in set(outcomes) if outcome
        }
        records: list[OutgoingRecord] = []
        new_record = tuple.__new__  # skips the named tuple's Python-level constructor
        decision_ids = new_random_ascii_ids(len(rows))
        for index, (row, result, outcome, decision_id) in enumerate(
            zip(rows, results, outcomes, decision_ids, strict=True)
        ):
            account_id = row.account_id.encode()
            score = result.score
            value = _DECISION_FORMAT % (
                decision_id,
                _ids(row.event_id.encode(), row.transaction_id.encode(), account_id),
                _SCORE + _DOUBLE.pack(score) if score else b"",
                outcome_fields[outcome] if outcome else b"",
                b"".join([_reason(*reason) for reason in result.reasons]),
                versions_and_time,
                len(row.accepted_at),
                row.accepted_at,
                len(row.occurred_at),
                row.occurred_at,
            )
            if features is not None:
                value += _features(features[index])
            if result.shadow_score is not None:
                value += _double(_SHADOW_SCORE, result.shadow_score) + shadow_version
            headers = [(HEADER_EVENT_ID, decision_id), *schema_headers]
            records.append(new_record(OutgoingRecord, (topic, account_id, value, headers, -1)))
        return records
