"""The replayed response and the outbox event of an accepted transaction are the bytes the protobuf
library writes for them, although they are written around one serialization of the transaction."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from txguard.kafka.serde import encode_transaction_created, parse_transaction_created
from txguard.schema.responses import create_transaction_response
from txguard.schema.v1.events_pb2 import TransactionCreated
from txguard.schema.v1.service_pb2 import CreateTransactionRequest, CreateTransactionResponse
from txguard.transactions.card import CardToken
from txguard.transactions.writer import accepted_transaction

text = st.text(max_size=300)  # Past 127 bytes a length takes two varint bytes.


@settings(max_examples=200, deadline=None)
@given(
    account_id=st.text(min_size=1, max_size=40),
    merchant_id=text,
    device_id=text,
    amount_minor=st.integers(1, 2**63 - 1),
    occurred_us=st.none() | st.integers(0, 2**50),
    now_us=st.integers(1_600_000_000_000_000, 2_000_000_000_000_000),  # 2020 to 2033
)
def test_response_and_event_are_the_library_bytes(
    account_id: str,
    merchant_id: str,
    device_id: str,
    amount_minor: int,
    occurred_us: int | None,
    now_us: int,
) -> None:
    request = CreateTransactionRequest(
        idempotency_key="key-1",
        account_id=account_id,
        amount_minor=amount_minor,
        currency="EUR",
        terminal_id="t-1",
        merchant_id=merchant_id,
        device_id=device_id,
    )
    if occurred_us is not None:
        request.occurred_at.FromMicroseconds(occurred_us)
    record, response = accepted_transaction(
        client_id="client",
        request=request,
        card=CardToken(token="tok", bin="411111", last4="1111"),
        fingerprint=b"f",
        now_us=now_us,
        topic="txguard.transactions.v1",
    )
    # What the store answers a replay with, from the record it keeps.
    replayed = create_transaction_response(record.transaction.SerializeToString())
    assert replayed == response.SerializeToString()
    assert CreateTransactionResponse.FromString(replayed) == response
    event = record.outbox_event
    expected = encode_transaction_created(
        TransactionCreated(event_id=event.event_id, transaction=response.transaction)
    )
    assert (event.key, event.payload, event.headers) == (
        expected.key,
        expected.value,
        expected.headers,
    )
    parsed = parse_transaction_created(event.payload, event.headers)
    assert parsed.transaction == response.transaction == record.transaction
