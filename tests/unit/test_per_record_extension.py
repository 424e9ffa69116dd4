"""The C extension `txguard.fraud._per_record` gives what the Python definitions give, for any
input.

`decode_rows` must return `decode_rows_in_python`'s rows for any record (a record the C reader
does not take goes to the same fallback); `DecisionWriter.records` must write
`records_in_python`'s bytes; `model_results` must build the reasons `f"{label}{value:g}"` names;
`group_rows` must group rows by account with `state.event_id_hash` of each event id;
`append_if_appendable` must answer as `_appendable` and append as `append_in_order`.
`customer_columns` is checked against `record_and_compute` in test_feature_batch.py.
"""

from __future__ import annotations

import math
from typing import Any, cast

import pytest
from confluent_kafka import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from txguard.fraud import _per_record, decision_wire
from txguard.fraud.decision_wire import DecisionWriter
from txguard.fraud.feature_batch import (
    TransactionRow,
    _Account,
    _appendable,
    decode_rows,
    decode_rows_in_python,
)
from txguard.fraud.scoring import ReasonScore, ScoreResult
from txguard.fraud.state import AccountHistory, event_id_hash
from txguard.kafka.consumer_loop import OutgoingRecord
from txguard.kafka.serde import (
    HEADER_EVENT_ID,
    HEADER_SCHEMA,
    HEADER_SCHEMA_VERSION,
    InvalidEvent,
    ReceivedHeaders,
    parse_transactions_topic_record,
)
from txguard.schema.v1.decision_pb2 import FraudDecision
from txguard.schema.v1.events_pb2 import TransactionCreated
from txguard.schema.v1.transaction_pb2 import Transaction
from txguard.schema.wire import length_delimited, varint

USUAL_HEADERS: list[tuple[str, bytes]] = [
    (HEADER_EVENT_ID, b"e-1"),
    (HEADER_SCHEMA, b"txguard.v1.TransactionCreated"),
    (HEADER_SCHEMA_VERSION, b"1"),
]
OTHER_HEADERS: list[list[tuple[str, bytes]]] = [
    USUAL_HEADERS[1:] + USUAL_HEADERS[:1],
    [(HEADER_EVENT_ID, b"w"), (HEADER_SCHEMA, b"txguard.v1.StreamWatermark")],
    [*USUAL_HEADERS[:2], (HEADER_SCHEMA_VERSION, b"2")],
]

texts = st.one_of(
    st.text(max_size=12), st.sampled_from(["", "acct-1", "EUR", "é" * 70, "\u65e5" * 50])
)
int64s = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 10**9))
# Around the largest seconds whose milliseconds int64 holds, too.
seconds = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(10**12), 10**12),
    st.just(0),
    st.integers(-9_223_372_036_854_776, -9_223_372_036_854_770),
    st.integers(9_223_372_036_854_770, 9_223_372_036_854_776),
)
nanos = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(0, 999_999_999), st.just(0))


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


# What may follow a Transaction's own fields: each either read as the protobuf library reads it
# by the C reader, or handed to the fallback.
TRANSACTION_EXTRAS = [
    b"",
    tag(30, 0) + varint(300),  # unknown varint
    tag(31, 1) + b"\x00" * 8,  # unknown 64-bit
    tag(32, 5) + b"\x00" * 4,  # unknown 32-bit
    tag(33, 2) + b"\x03abc",  # unknown bytes
    tag(34, 3) + tag(34, 4),  # unknown group
    tag(9, 2) + b"\x02\xff\xfe",  # card token that is not UTF-8
    tag(13, 2) + "é".encode(),  # (length missing: truncated)
    tag(4, 2) + b"\x06acct-2",  # the account id again: the last one counts
    tag(5, 2) + b"\x01x",  # the amount with the wrong wire type
    tag(5, 0) + varint(7),  # the amount again
    tag(12, 0) + varint(3),  # channel
    tag(17, 0) + varint(2),  # status
    length_delimited(tag(18, 2), FraudDecision(score=0.5).SerializeToString()),
    length_delimited(tag(15, 2), b"\x08\x01\x18\x05"),  # occurred_at again, with field 3
    length_delimited(tag(16, 2), b"\x10\x05"),  # accepted_at again
    b"\xff",  # a broken tag
]
EVENT_EXTRAS = [
    b"",
    b"\x8a\x80\x80\x80\x80\x00\x03e-9",  # the event id's tag in 6 bytes (overlong)
    b"\x0a\x83\x80\x80\x80\x80\x00e-9",  # the event id's length in 6 bytes (overlong)
    tag(1, 2) + b"\x03e-2",  # the event id again
    tag(3, 0) + varint(1),  # unknown field
    length_delimited(tag(2, 2), Transaction(account_id="acct-3").SerializeToString()),  # merged
    b"\x00",  # field number 0
]


@st.composite
def transaction_records(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, bytes]]]:
    tx = Transaction(
        transaction_id=draw(texts),
        account_id=draw(texts),
        amount_minor=draw(int64s),
        currency=draw(texts),
        terminal_id=draw(texts),
        card_token=draw(texts),
        client_id=draw(texts),
    )
    for timestamp in (tx.occurred_at, tx.accepted_at):
        if draw(st.integers(0, 5)):
            timestamp.SetInParent()
            timestamp.seconds = draw(seconds)
            timestamp.nanos = draw(nanos)
    tx_bytes = tx.SerializeToString() + draw(st.sampled_from(TRANSACTION_EXTRAS))
    event_id = draw(texts).encode()
    value = (
        (length_delimited(tag(1, 2), event_id) if event_id else b"")
        + (length_delimited(tag(2, 2), tx_bytes) if draw(st.integers(0, 9)) else b"")
        + draw(st.sampled_from(EVENT_EXTRAS))
    )
    if not draw(st.integers(0, 19)):
        value = value[: draw(st.integers(0, len(value)))]
    usual = draw(st.integers(0, 5)) > 0
    record_headers = USUAL_HEADERS if usual else draw(st.sampled_from(OTHER_HEADERS))
    return value, record_headers


def general_reading(message: Message) -> TransactionRow | None:
    """The detector's fallback: the general reader, None for a watermark or poison record."""
    try:
        event = parse_transactions_topic_record(
            message.value(), cast(ReceivedHeaders, message.headers())
        )
    except InvalidEvent:
        return None
    if event is None:
        return None
    try:
        return TransactionRow.of(
            cast(int, message.partition()), event, offset=cast(int, message.offset())
        )
    except InvalidEvent:
        return None


def as_messages(records: list[tuple[bytes, list[tuple[str, bytes]]]]) -> list[Message]:
    return [
        Message(topic="tx", partition=3, offset=10 + index, value=value, headers=list(headers))
        for index, (value, headers) in enumerate(records)
    ]


@settings(max_examples=400, deadline=None)
@given(st.lists(transaction_records(), max_size=8))
def test_decode_rows_gives_the_python_definitions_rows_for_any_record(
    records: list[tuple[bytes, list[tuple[str, bytes]]]],
) -> None:
    messages = as_messages(records)
    rows = decode_rows(messages, general_reading)
    assert rows == decode_rows_in_python(messages, general_reading)
    assert all(type(row) is TransactionRow for row in rows)


def usual_event(event_id: str, *, amount_minor: int = 1_250) -> bytes:
    event = TransactionCreated(event_id=event_id)
    tx = event.transaction
    tx.transaction_id, tx.account_id, tx.currency = f"t-{event_id}", "acct-1", "EUR"
    tx.amount_minor, tx.terminal_id, tx.card_token = amount_minor, "term-9", "tok_1"
    tx.occurred_at.FromMilliseconds(-1_700_000_000_123)
    tx.accepted_at.FromMicroseconds(1_700_000_000_456_789)
    return event.SerializeToString()


def test_the_usual_record_is_read_without_the_fallback() -> None:
    handed: list[Message] = []

    def fallback(message: Message) -> TransactionRow | None:
        handed.append(message)
        return general_reading(message)

    messages = as_messages([(usual_event(f"e-{n}"), USUAL_HEADERS) for n in range(3)])
    rows = decode_rows(messages, fallback)
    assert handed == []
    assert rows == decode_rows_in_python(messages, general_reading)
    assert [row.offset for row in rows] == [10, 11, 12]
    assert rows[0].occurred_ms == -1_700_000_000_123
    assert rows[0].partition == 3


def test_an_error_in_the_fallback_is_raised() -> None:
    def fallback(message: Message) -> TransactionRow | None:
        raise RuntimeError("fallback failed")

    messages = as_messages([(b"\xff", USUAL_HEADERS)])
    with pytest.raises(RuntimeError, match="fallback failed"):
        decode_rows(messages, fallback)


floats = st.floats(allow_nan=True, allow_infinity=True)
reasons = st.lists(
    st.builds(ReasonScore, texts, texts, st.one_of(st.just(0.0), floats)), max_size=4
)
results = st.builds(
    ScoreResult,
    st.one_of(st.just(0.0), st.just(-0.0), floats),
    reasons.map(tuple),
    st.one_of(st.none(), st.just(0.0), floats),
)


# Timestamps as rows hold them: the longest has both fields negative (22 bytes).
TIMESTAMPS = [
    Timestamp(seconds=seconds, nanos=nanos).SerializeToString()
    for seconds, nanos in ((0, 0), (1, 0), (0, 7), (1_700_000_000, 123_000_000), (-1, -1))
]


@st.composite
def rows_and_results(draw: st.DrawFn) -> tuple[list[TransactionRow], list[ScoreResult]]:
    count = draw(st.integers(0, 6))
    rows = []
    for offset in range(count):
        rows.append(
            TransactionRow(
                partition=1,
                event_id=draw(texts),
                transaction_id=draw(texts),
                account_id=draw(texts),
                amount_minor=5,
                currency="EUR",
                terminal_id="",
                occurred_ms=0,
                accepted_seconds=0.0,
                occurred_at=draw(st.sampled_from(TIMESTAMPS)),
                accepted_at=draw(st.sampled_from(TIMESTAMPS)),
                offset=offset,
            )
        )
    return rows, [draw(results) for _ in rows]


@settings(max_examples=300, deadline=None)
@given(
    rows_and_results(),
    st.lists(st.integers(-3, 300), min_size=6, max_size=6),
    texts,
    st.integers(0, 2**62),
)
def test_records_write_the_python_definitions_bytes(
    batch: tuple[list[TransactionRow], list[ScoreResult]],
    outcomes: list[int],
    shadow_version: str,
    decided_at_us: int,
) -> None:
    rows, scored = batch
    ids = [f"{n:032x}".encode() for n in range(len(rows))]
    writer = DecisionWriter("decisions")
    arguments: dict[str, Any] = {
        "model_version": "m-1",
        "rules_version": "rules-2",
        "decided_at_us": decided_at_us,
        "shadow_model_version": shadow_version,
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decision_wire, "new_random_ascii_ids", lambda count: ids[:count])
        written = writer.records(rows, scored, outcomes[: len(rows)], **arguments)
        expected = writer.records_in_python(rows, scored, outcomes[: len(rows)], **arguments)
    assert written == expected
    assert all(type(record) is OutgoingRecord for record in written)


def test_records_refuse_rows_of_the_wrong_shape() -> None:
    with pytest.raises(TypeError):
        DecisionWriter("d").records(
            [cast(TransactionRow, ("not", "a", "row"))],
            [ScoreResult(0.5)],
            [1],
            model_version="m",
            rules_version="r",
            decided_at_us=1,
        )


def flat(rows: list[list[Any]]) -> list[Any]:
    return [item for row in rows for item in row]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(floats, min_size=3, max_size=3), max_size=6), st.data())
def test_model_results_name_each_kept_feature_with_its_value(
    values: list[list[float]], data: st.DataObject
) -> None:
    count = len(values)
    keep = [data.draw(st.lists(st.booleans(), min_size=3, max_size=3)) for _ in values]
    skip = data.draw(st.sets(st.integers(0, max(count - 1, 0))))
    shadow = data.draw(st.one_of(st.none(), st.just([0.25] * count)))
    columns = [[2, 0, 1]] * count
    fractions = [[0.5, 0.3, 0.2]] * count
    codes, labels = ["feature.A", "feature.B", "feature.C"], ["A = ", "B = ", "C = "]
    scores = [n / 10 for n in range(count)]
    got = _per_record.model_results(
        scores, shadow, 3, flat(columns), flat(fractions), flat(values), flat(keep), codes,
        labels, skip, ScoreResult, ReasonScore,
    )  # fmt: skip
    for row in range(count):
        if row in skip:
            assert got[row] is None
            continue
        want = ScoreResult(
            scores[row],
            tuple(
                ReasonScore(codes[column], f"{labels[column]}{value:g}", fraction)
                for column, fraction, value, kept in zip(
                    columns[row], fractions[row], values[row], keep[row], strict=True
                )
                if kept
            ),
            None if shadow is None else shadow[row],
        )
        result = got[row]
        assert type(result) is ScoreResult
        assert result == want
        assert all(type(reason) is ReasonScore for reason in result.reasons)


def test_model_results_format_values_as_python_does() -> None:
    values = [0.0, -0.0, 1.0, 123456.0, 1234567.0, 1e-5, 132.98, math.inf, -math.inf, math.nan]
    width = len(values)
    got = _per_record.model_results(
        [0.5], None, width, [0] * width, [1.0] * width, values, [True] * width, ["c"], ["x="],
        set(), ScoreResult, ReasonScore,
    )  # fmt: skip
    result = got[0]
    assert result is not None
    assert [reason.description for reason in result.reasons] == [f"x={v:g}" for v in values]


def test_model_results_refuse_arguments_of_different_lengths() -> None:
    with pytest.raises(TypeError):
        _per_record.model_results(
            [0.5, 0.5], None, 1, [0], [1.0], [1.0], [True], ["c"], ["x="], set(),
            ScoreResult, ReasonScore,
        )  # fmt: skip
    with pytest.raises(IndexError):
        _per_record.model_results(
            [0.5], None, 1, [5], [1.0], [1.0], [True], ["c"], ["x="], set(),
            ScoreResult, ReasonScore,
        )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.integers(0, 300).map(lambda n: "x" * n), st.just("é" * 64)))
def test_event_id_hash_in_c_is_the_states(event_id: str) -> None:
    assert _per_record.event_id_hash(event_id) == event_id_hash(event_id)


def test_event_id_hash_in_c_around_blake2bs_block_size() -> None:
    for size in (0, 1, 127, 128, 129, 255, 256, 257, 1_000):
        event_id = "".join(chr(97 + n % 26) for n in range(size))
        assert _per_record.event_id_hash(event_id) == event_id_hash(event_id)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["a", "b", "é", ""]), texts), max_size=12)
)
def test_group_rows_groups_by_partition_and_account_in_order_of_first_appearance(
    events: list[tuple[int, str, str]],
) -> None:
    rows = [
        TransactionRow(partition, event_id, "t", account_id, 1, "EUR", "", 0, 0.0, b"", b"", n)
        for n, (partition, account_id, event_id) in enumerate(events)
    ]
    expected: dict[tuple[int, str], tuple[list[int], list[int]]] = {}
    for index, row in enumerate(rows):
        indices, hashes = expected.setdefault((row.partition, row.account_id), ([], []))
        indices.append(index)
        hashes.append(event_id_hash(row.event_id))
    assert _per_record.group_rows(rows) == [
        (partition, account_id, indices, hashes)
        for (partition, account_id), (indices, hashes) in expected.items()
    ]


def test_overlong_tags_and_lengths_are_not_read_as_fields() -> None:
    """The protobuf library refuses a tag or a length written in more than 5 bytes."""
    transaction = TransactionCreated.FromString(usual_event("e-1")).transaction.SerializeToString()
    values = [
        b"\x8a\x80\x80\x80\x80\x00\x03e-1" + length_delimited(tag(2, 2), transaction),
        b"\x0a\x83\x80\x80\x80\x80\x00e-1" + length_delimited(tag(2, 2), transaction),
        b"\x0a\x03e-1\x92\x80\x80\x80\x80\x00" + varint(len(transaction)) + transaction,
    ]
    messages = as_messages([(value, USUAL_HEADERS) for value in values])
    assert decode_rows(messages, general_reading) == []
    assert decode_rows_in_python(messages, general_reading) == []


def test_milliseconds_beyond_int64_are_python_integers() -> None:
    event = TransactionCreated.FromString(usual_event("e-1"))
    event.transaction.occurred_at.seconds = 9_223_372_036_854_774
    event.transaction.occurred_at.nanos = 2_147_483_647
    messages = as_messages([(event.SerializeToString(), USUAL_HEADERS)])
    rows = decode_rows(messages, general_reading)
    assert rows == decode_rows_in_python(messages, general_reading)
    assert rows[0].occurred_ms == 9_223_372_036_854_776_147


def test_a_fallback_that_empties_the_batch_ends_it_as_a_loop_would() -> None:
    records = as_messages(
        [(usual_event("e-1"), USUAL_HEADERS), (b"\xff", USUAL_HEADERS)]
        + [(usual_event(f"e-{n}"), USUAL_HEADERS) for n in range(2, 5)]
    )

    def emptying(message: Message) -> TransactionRow | None:
        records.clear()
        return None

    rows = decode_rows(records, emptying)
    assert [row.event_id for row in rows] == ["e-1"]


def test_model_results_refuse_a_label_that_is_not_text() -> None:
    with pytest.raises(TypeError):
        _per_record.model_results(
            [0.5], None, 1, [0], [1.0], [1.0], [True], ["c"], [cast(str, b"x=")], set(),
            ScoreResult, ReasonScore,
        )  # fmt: skip


# -- appending a batch's events to an account ----------------------------------------------

_LONGEST_MS = 1_000
_MAX_EVENTS = 8
_MAX_AMOUNT = 1 << 10
_MAX_TIME_MS = 1 << 20


def _history(events: list[tuple[int, int, int]], last: int, bound: int) -> AccountHistory:
    history = AccountHistory("acct")
    for id_hash, time_ms, amount in events:
        history.hashes.append(id_hash)
        history.times_ms.append(time_ms)
        history.amounts_minor.append(amount)
    history.last_event_time_ms = last
    history.amount_bound_minor = bound
    return history


def _state(history: AccountHistory) -> tuple[object, ...]:
    return (
        list(history.hashes),
        list(history.times_ms),
        list(history.amounts_minor),
        history.last_event_time_ms,
        history.amount_bound_minor,
    )


# Few hash values: collisions with the history and inside the batch. Amounts around the bounds
# (negative ones too, which only the history can hold). Batch times mostly in order from the
# account's last event time, now and then back, or at the time bound.
_hashes = st.integers(0, 24)
_amounts = st.sampled_from([-3, -1, 0, 5, _MAX_AMOUNT - 1, _MAX_AMOUNT, _MAX_AMOUNT + 2])
_steps = st.one_of(st.integers(0, 30), st.integers(0, 30), st.just(-1), st.just(_MAX_TIME_MS))


@settings(max_examples=600, deadline=None)
@given(
    remembered=st.lists(st.tuples(_hashes, st.integers(0, 1_200), _amounts), max_size=8),
    last=st.one_of(st.integers(900, 1_200), st.just(_LONGEST_MS - 40)),
    bound=st.one_of(st.integers(0, _MAX_AMOUNT - 1), st.integers(_MAX_AMOUNT, 1 << 70)),
    batch=st.lists(
        st.tuples(_hashes, _steps, st.sampled_from([0, 7, _MAX_AMOUNT - 1, _MAX_AMOUNT, -1])),
        min_size=1,
        max_size=6,
    ),
)
def test_append_if_appendable_decides_and_appends_as_python_does(
    remembered: list[tuple[int, int, int]],
    last: int,
    bound: int,
    batch: list[tuple[int, int, int]],
) -> None:
    batch_times: list[int] = []
    clock = last
    for _, step, _ in batch:
        clock = step if step == _MAX_TIME_MS else clock + step
        batch_times.append(clock)
    batch = [(h, t, a) for (h, _, a), t in zip(batch, batch_times, strict=True)]
    # The batch: unrelated rows around the account's, whose events sit at `indices`.
    times = [0, *(time_ms for _, time_ms, _ in batch), 0]
    amounts = [0, *(amount for _, _, amount in batch), 0]
    indices = list(range(1, len(batch) + 1))
    hashes = [id_hash for id_hash, _, _ in batch]
    in_python = _history(remembered, last, bound)
    in_c = _history(remembered, last, bound)
    account = _Account(0, in_python.account_id, in_python, indices, hashes)
    expected = _appendable(
        account,
        times,
        amounts,
        _LONGEST_MS,
        max_events=_MAX_EVENTS,
        max_amount=_MAX_AMOUNT,
        max_time_ms=_MAX_TIME_MS,
    )
    if expected:
        for index, id_hash in zip(indices, hashes, strict=True):
            in_python.append_in_order(id_hash, times[index], amounts[index])

    appended = _per_record.append_if_appendable(
        in_c, indices, hashes, times, amounts, _LONGEST_MS, _MAX_EVENTS, _MAX_AMOUNT, _MAX_TIME_MS
    )

    assert appended is expected
    assert _state(in_c) == _state(in_python)


def test_append_if_appendable_appends_all_events_or_none() -> None:
    history = _history([(1, 950, 5), (2, 960, 6)], 960, 6)
    before = _state(history)
    # An exported buffer keeps `hashes` from growing: its append fails after `times_ms` grew.
    with memoryview(history.hashes), pytest.raises(BufferError):
        _per_record.append_if_appendable(
            history, [0, 1], [7, 8], [1_000, 1_001], [1, 2], 0, 8, 1 << 10, 1 << 20
        )
    assert _state(history) == before
