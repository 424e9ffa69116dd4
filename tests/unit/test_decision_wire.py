"""The detector's decision records parse into exactly the FraudDecision `build_decision` builds."""

from __future__ import annotations

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from txguard.fraud.decision_wire import DecisionWriter
from txguard.fraud.decisions import DecisionThresholds, build_decision
from txguard.fraud.feature_batch import TransactionRow
from txguard.fraud.features import ALL_FEATURES
from txguard.fraud.scoring import ReasonScore, ScoreResult
from txguard.kafka.serde import HEADER_EVENT_ID, HEADER_SCHEMA, decode_decision
from txguard.schema.v1.decision_pb2 import FraudDecision
from txguard.schema.v1.events_pb2 import TransactionCreated
from txguard.schema.wire import varint

THRESHOLDS = DecisionThresholds(review=0.5, decline=0.8)
text = st.text(max_size=40)
identifier = st.text(min_size=1, max_size=40)
seconds = st.integers(-(2**40), 2**40)
nanos = st.integers(0, 999_999_999)
# A Timestamp as an event holds it, in protobuf's wire format (the zero one is empty).
timestamp = st.builds(Timestamp, seconds=seconds, nanos=nanos).map(Timestamp.SerializeToString)
unit = st.floats(0.0, 1.0)


def event_of(row: TransactionRow) -> TransactionCreated:
    event = TransactionCreated(event_id=row.event_id)
    tx = event.transaction
    tx.transaction_id = row.transaction_id
    tx.account_id = row.account_id
    tx.accepted_at.MergeFromString(row.accepted_at)
    tx.occurred_at.MergeFromString(row.occurred_at)
    return event


rows = st.builds(
    TransactionRow,
    partition=st.just(0),
    event_id=identifier,
    transaction_id=identifier,
    account_id=identifier,
    amount_minor=st.just(100),
    currency=st.just("EUR"),
    terminal_id=st.just(""),
    occurred_ms=st.just(0),
    accepted_seconds=st.just(0.0),
    occurred_at=timestamp,
    accepted_at=timestamp,
)
results = st.builds(
    ScoreResult,
    score=unit,
    reasons=st.lists(st.builds(ReasonScore, text, text, unit), max_size=5).map(tuple),
    shadow_score=st.none() | unit,
)


@settings(max_examples=300, deadline=None)
@given(
    batch=st.lists(st.tuples(rows, results), min_size=1, max_size=5),
    model_version=text,
    shadow_version=text,
    decided_at_us=st.integers(-(2**50), 2**52),
    with_features=st.booleans(),
)
def test_records_parse_into_the_decision_build_decision_makes(
    batch: list[tuple[TransactionRow, ScoreResult]],
    model_version: str,
    shadow_version: str,
    decided_at_us: int,
    with_features: bool,
) -> None:
    features = (
        np.random.default_rng(len(batch)).normal(size=(len(batch), len(ALL_FEATURES))).tolist()
        if with_features
        else None
    )
    batch_rows = [row for row, _ in batch]
    batch_results = [result for _, result in batch]
    outcomes = THRESHOLDS.outcomes(np.array([r.score for r in batch_results]))
    records = DecisionWriter("decisions").records(
        batch_rows,
        batch_results,
        outcomes,
        model_version=model_version,
        rules_version="rules-1",
        decided_at_us=decided_at_us,
        shadow_model_version=shadow_version,
        features=features,
    )
    assert len(records) == len(batch)
    for index, (record, row, result) in enumerate(
        zip(records, batch_rows, batch_results, strict=True)
    ):
        parsed = FraudDecision.FromString(record.value or b"")
        expected = build_decision(
            event_of(row),
            result,
            thresholds=THRESHOLDS,
            model_version=model_version,
            rules_version="rules-1",
            decided_at_us=decided_at_us,
            decision_id=parsed.decision_id,
            shadow_model_version=shadow_version,
        )
        if features is not None:
            expected.features.update(zip(ALL_FEATURES, features[index], strict=True))
        assert parsed == expected
        assert record.topic == "decisions"
        assert record.key == row.account_id.encode()
        headers = dict(record.headers)
        assert headers[HEADER_EVENT_ID] == parsed.decision_id.encode()
        # The consumers' own decoder accepts it (schema header included).
        assert decode_decision(record.value, record.headers) == expected


def test_decision_ids_are_fresh_uuids() -> None:
    stamp = Timestamp(seconds=1).SerializeToString()
    row = TransactionRow(0, "e", "t", "a", 1, "EUR", "", 0, 1.0, stamp, stamp)
    records = DecisionWriter("d").records(
        [row] * 50,
        [ScoreResult(0.1)] * 50,
        [1] * 50,
        model_version="m",
        rules_version="r",
        decided_at_us=0,
    )
    ids = [FraudDecision.FromString(r.value or b"").decision_id for r in records]
    assert len(set(ids)) == 50
    assert all(len(i) == 32 and i[12] == "4" and i[16] in "89ab" for i in ids)
    assert {dict(r.headers)[HEADER_SCHEMA] for r in records} == {b"txguard.v1.FraudDecision"}


def test_varint_matches_the_protobuf_encoding() -> None:
    # Every length the encoder writes out by hand, at both ends, and the general case.
    lengths = [(1 << (7 * size)) - 1 for size in range(1, 6)] + [
        1 << (7 * size) for size in range(1, 6)
    ]
    for value in (0, 1, 300, 2**31, 2**62, 2**63 - 1, -1, -(2**40), *lengths):
        encoded = Timestamp(seconds=value).SerializeToString()
        assert encoded == (b"\x08" + varint(value) if value else b"")
