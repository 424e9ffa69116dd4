"""The transaction API through a real gRPC channel, a real server and a real SQLite file.

No broker: the API only writes the outbox; publishing it is the relay's job. Each test runs its own
server on a free port with its own database, and on the way out checks that no card number it used
reached the database files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import socket
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from txguard.clock import now_us, timestamp_from_us
from txguard.config import ConfigError, Settings
from txguard.kafka.serde import decode_transaction_created
from txguard.schema.luhn import with_check_digit
from txguard.schema.v1 import service_pb2_grpc
from txguard.schema.v1.service_pb2 import (
    CreateTransactionRequest,
    CreateTransactionResponse,
    GetTransactionRequest,
    SubmitTransactionBatch,
    SubmitTransactionBatchResult,
    SubmitTransactionsRequest,
    SubmitTransactionsResponse,
)
from txguard.schema.v1.transaction_pb2 import Channel, TransactionStatus
from txguard.transactions.batch_limits import MAX_BATCH_ITEMS
from txguard.transactions.client import TransactionClient, error_status, field_violations
from txguard.transactions.server import SERVICE_NAME, serve

pytestmark = pytest.mark.integration

KEY = bytes(range(32))
CLIENT_ID = "test-client"


# Valid test card numbers; every test checks on exit that none of them reached the database.
PANS = [with_check_digit(f"4{n:014d}") for n in range(1, 41)]
# Luhn-invalid and malformed ones, sent in rejected requests.
BAD_PANS = [pan[:-1] + str((int(pan[-1]) + 1) % 10) for pan in PANS[:5]]


def request(index: int, *, prefix: str = "tx", with_time: bool = False) -> CreateTransactionRequest:
    req = CreateTransactionRequest(
        idempotency_key=f"{prefix}-{index}",
        account_id=f"account-{index % 97}",
        amount_minor=1000 + index,
        currency="EUR",
        terminal_id=f"terminal-{index % 13}",
        card_number=PANS[index % len(PANS)],
        merchant_id=f"merchant-{index % 7}",
        channel=Channel.CHANNEL_ECOMMERCE,
        country="DE",
        device_id=f"device-{index % 11}",
    )
    if with_time:
        req.occurred_at.CopyFrom(timestamp_from_us(now_us() - 60_000_000))
    return req


@dataclass
class Api:
    settings: Settings
    channel: grpc.aio.Channel
    client: TransactionClient
    stopping: asyncio.Event
    extra_pans: set[str] = field(default_factory=set)

    @property
    def stub(self) -> service_pb2_grpc.TransactionServiceAsyncStub:
        return service_pb2_grpc.TransactionServiceStub(self.channel)

    def counts(self) -> dict[str, int]:
        return table_counts(self.settings.store_path)


def table_counts(db_path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return {
            table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("transactions", "idempotency_keys", "outbox")
        }


def _settings(home: Path, addr: str = "127.0.0.1:0") -> Settings:
    return Settings.from_env(
        {"TXGUARD_HOME": str(home), "TXGUARD_GRPC_ADDR": addr, "TXGUARD_CARD_TOKEN_KEY": KEY.hex()}
    )


def assert_no_card_numbers_on_disk(db_path: Path, pans: Iterable[str]) -> None:
    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    assert db_path in files
    data = b"".join(p.read_bytes() for p in files)
    leaked = [pan for pan in pans if pan.encode() in data]
    assert not leaked, f"card numbers found in {[p.name for p in files]}: {leaked}"
    if table_counts(db_path)["transactions"]:
        # The search can see stored text at all (account ids are stored in clear).
        assert b"account-" in data


@contextlib.asynccontextmanager
async def running_api(home: Path, *, stream_window: int | None = None) -> AsyncIterator[Api]:
    settings = _settings(home)
    stopping = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    options = {} if stream_window is None else {"stream_window": stream_window}
    server = asyncio.create_task(serve(settings, stopping, started=bound.set_result, **options))
    starting: set[asyncio.Future[Any]] = {server, bound}
    await asyncio.wait(starting, return_when=asyncio.FIRST_COMPLETED)
    if server.done():
        server.result()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{bound.result()}")
    api = Api(settings, channel, TransactionClient(channel, CLIENT_ID), stopping)
    try:
        yield api
    finally:
        await channel.close()
        stopping.set()
        await server
    assert_no_card_numbers_on_disk(settings.store_path, [*PANS, *BAD_PANS, *api.extra_pans])


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coroutine)


def rpc_error_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    status = error_status(error)
    assert status is not None, "the error carries no google.rpc.Status"
    assert status.code == error.code().value[0]
    return status


def error_reason(status: status_pb2.Status) -> str:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def test_create_then_get(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(tmp_path) as api:
            before = now_us()
            created = await api.client.create(request(1))
            tx = created.transaction
            assert uuid.UUID(tx.transaction_id).version == 7  # time-ordered
            assert tx.client_id == CLIENT_ID
            assert tx.status == TransactionStatus.TRANSACTION_STATUS_PENDING
            assert (tx.account_id, tx.amount_minor, tx.currency) == ("account-1", 1001, "EUR")
            pan = PANS[1]
            assert tx.card_token == hmac.new(KEY, pan.encode(), hashlib.sha256).hexdigest()
            assert (tx.card_bin, tx.card_last4) == (pan[:6], pan[-4:])
            # Without occurred_at, the event time is the acceptance time.
            assert tx.occurred_at == tx.accepted_at
            assert before <= tx.accepted_at.ToMicroseconds() <= now_us()

            fetched = await api.client.get(tx.transaction_id)
            assert fetched == tx

            timed = request(2, with_time=True)
            created_timed = await api.client.create(timed)
            assert created_timed.transaction.occurred_at == timed.occurred_at

            assert api.counts() == {"transactions": 2, "idempotency_keys": 2, "outbox": 2}
            with contextlib.closing(sqlite3.connect(api.settings.store_path)) as db:
                key, payload, headers_json = db.execute(
                    "SELECT key, payload, headers FROM outbox ORDER BY seq LIMIT 1"
                ).fetchone()
            headers = [(name, bytes.fromhex(value)) for name, value in json.loads(headers_json)]
            event = decode_transaction_created(payload, headers)
            assert bytes(key) == b"account-1"
            assert event.transaction == tx

    run(scenario())


INVALID_FIELDS: dict[str, dict[str, object]] = {
    "idempotency_key": {"idempotency_key": ""},
    "account_id": {"account_id": "  "},
    "amount_minor": {"amount_minor": 0},
    "currency": {"currency": "XAU"},
    "terminal_id": {"terminal_id": "t" * 129},
    "card_number": {"card_number": BAD_PANS[0]},
    "occurred_at": {"occurred_at": timestamp_from_us(now_us() + 3600 * 10**6)},
    "merchant_id": {"merchant_id": "m\nx"},
    "channel": {"channel": 42},
    "country": {"country": "deu"},
    "device_id": {"device_id": "d" * 200},
}


def _broken(index: int, overrides: dict[str, object]) -> CreateTransactionRequest:
    req = request(index, prefix="bad")
    for name, value in overrides.items():
        if isinstance(value, Timestamp):
            getattr(req, name).CopyFrom(value)
        else:
            setattr(req, name, value)
    return req


def test_every_invalid_field_is_named_and_nothing_is_stored(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(tmp_path) as api:
            cases = [({name}, _broken(i, o)) for i, (name, o) in enumerate(INVALID_FIELDS.items())]
            everything: dict[str, object] = {}
            for overrides in INVALID_FIELDS.values():
                everything.update(overrides)
            cases.append((set(INVALID_FIELDS), _broken(99, everything)))
            for expected, req in cases:
                pan = req.card_number
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await api.client.create(req)
                error = raised.value
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                status = rpc_error_status(error)
                violations = field_violations(status)
                assert set(violations) == expected
                text = " ".join([error.details() or "", status.message, *violations.values()])
                assert pan not in text
                assert pan[:6] not in text and pan[-4:] not in text
            assert api.counts() == {"transactions": 0, "idempotency_keys": 0, "outbox": 0}

    run(scenario())


def test_calls_without_client_id_are_unauthenticated(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(tmp_path) as api:
            stub = api.stub
            for metadata in [(), (("x-client-id", ""),), (("x-client-id", "x" * 129),)]:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await stub.CreateTransaction(request(1), metadata=metadata)
                assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "x-client-id" in (raised.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetTransaction(GetTransactionRequest(transaction_id="x"))
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            call = stub.SubmitTransactions(
                iter([SubmitTransactionsRequest(request_id="1", transaction=request(1))])
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in call:
                    pass
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            batches = stub.SubmitTransactionBatches(iter([_batch({"1": request(1)})]))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in batches:
                    pass
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert api.counts()["transactions"] == 0

    run(scenario())


@dataclass
class RetryStats:
    codes: Counter[grpc.StatusCode] = field(default_factory=Counter)


async def create_retrying(
    client: TransactionClient, req: CreateTransactionRequest, stats: RetryStats
) -> CreateTransactionResponse:
    """What a real client does: retry ABORTED (same key still in flight) with jittered backoff."""
    backoff = 0.002
    for _ in range(200):
        try:
            return await client.create(req, timeout=30)
        except grpc.aio.AioRpcError as error:
            stats.codes[error.code()] += 1
            if error.code() != grpc.StatusCode.ABORTED:
                raise
        await asyncio.sleep(random.uniform(backoff / 2, backoff))
        backoff = min(backoff * 2, 0.1)
    raise AssertionError("still ABORTED after 200 attempts")


def test_idempotent_acceptance_under_retries_and_concurrency(tmp_path: Path) -> None:
    transactions = 1000
    # Every transaction is sent 3 times at once; every 50th one 10 times at once.
    copies = [10 if i % 50 == 0 else 3 for i in range(transactions)]
    stats = RetryStats()

    async def scenario() -> None:
        async with running_api(tmp_path) as api:
            requests = [request(i, with_time=i % 2 == 0) for i in range(transactions)]
            window = asyncio.Semaphore(100)

            async def send_copies(i: int) -> list[bytes]:
                async with window:
                    answers = await asyncio.gather(
                        *(create_retrying(api.client, requests[i], stats) for _ in range(copies[i]))
                    )
                return [answer.SerializeToString() for answer in answers]

            order = list(range(transactions))
            random.Random(7).shuffle(order)
            answers = dict(zip(order, await asyncio.gather(*map(send_copies, order)), strict=True))

            ids = set()
            for i, serialized in answers.items():
                assert len(serialized) == copies[i]
                assert len(set(serialized)) == 1, f"transaction {i}: copies got different answers"
                ids.add(
                    CreateTransactionResponse.FromString(serialized[0]).transaction.transaction_id
                )
            assert len(ids) == transactions
            assert api.counts() == {
                "transactions": transactions,
                "idempotency_keys": transactions,
                "outbox": transactions,
            }
            # A later replay, one by one, still gets the original bytes.
            for i in range(0, transactions, 100):
                replay = await api.client.create(requests[i])
                assert replay.SerializeToString() == answers[i][0]
            assert api.counts()["transactions"] == transactions

    run(scenario())
    assert set(stats.codes) <= {grpc.StatusCode.ABORTED}
    # The 10-copy bursts must have met the in-flight registry, or this test proves nothing.
    assert stats.codes[grpc.StatusCode.ABORTED] > 0


def test_two_servers_on_one_store_agree_on_every_key(tmp_path: Path) -> None:
    """Two servers (as two processes would) share the database: the store arbitrates."""
    transactions = 200
    stats = RetryStats()

    async def scenario() -> None:
        async with running_api(tmp_path) as first, running_api(tmp_path) as second:
            assert first.settings.store_path == second.settings.store_path

            async def race(i: int) -> set[bytes]:
                req = request(i, prefix="race")
                answers = await asyncio.gather(
                    create_retrying(first.client, req, stats),
                    create_retrying(second.client, req, stats),
                )
                return {answer.SerializeToString() for answer in answers}

            outcomes = await asyncio.gather(*map(race, range(transactions)))
            assert all(len(outcome) == 1 for outcome in outcomes)
            assert first.counts() == {
                "transactions": transactions,
                "idempotency_keys": transactions,
                "outbox": transactions,
            }

    run(scenario())
    # No in-flight registry spans servers: neither ever answered ABORTED for the other's call.
    assert not stats.codes


def test_replay_is_byte_identical_and_a_changed_payload_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(tmp_path) as api:
            original = request(5)
            first = await api.client.create(original)
            await asyncio.sleep(0.01)  # occurred_at defaulted at the first call must not matter
            replay = await api.client.create(original)
            assert replay.SerializeToString() == first.SerializeToString()
            counts = api.counts()

            changed = CreateTransactionRequest()
            changed.CopyFrom(original)
            changed.amount_minor += 1
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await api.client.create(changed)
            assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_reason(rpc_error_status(raised.value)) == "IDEMPOTENCY_KEY_REUSED"

            other_card = CreateTransactionRequest()
            other_card.CopyFrom(original)
            other_card.card_number = PANS[6]
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await api.client.create(other_card)
            assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert api.counts() == counts

            # Keys are scoped per client: another client's same key is another transaction.
            other_client = TransactionClient(api.channel, "another-client")
            theirs = await other_client.create(original)
            assert theirs.transaction.transaction_id != first.transaction.transaction_id
            assert api.counts()["transactions"] == counts["transactions"] + 1

    run(scenario())


def test_get_unknown_empty_and_foreign_ids(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(tmp_path) as api:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await api.client.get("01890000-0000-7000-8000-000000000000")
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND

            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await api.client.get("")
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert set(field_violations(rpc_error_status(raised.value))) == {"transaction_id"}

            created = await api.client.create(request(1))
            stranger = TransactionClient(api.channel, "stranger")
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stranger.get(created.transaction.transaction_id)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    run(scenario())


def test_submit_stream_answers_every_item_and_keeps_going(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(tmp_path) as api:
            earlier = await api.client.create(request(0, prefix="s"))
            items = {
                "valid-1": request(1, prefix="s"),
                "valid-2": request(2, prefix="s", with_time=True),
                "invalid-card": _broken(3, {"card_number": BAD_PANS[1]}),
                "invalid-two": _broken(4, {"currency": "eur", "country": "D"}),
                "replayed": request(0, prefix="s"),
            }
            call = api.client.submit()

            async def exchange(batch: dict[str, CreateTransactionRequest]) -> dict[str, Any]:
                for request_id, item in batch.items():
                    await call.write(
                        SubmitTransactionsRequest(request_id=request_id, transaction=item)
                    )
                answers: dict[str, SubmitTransactionsResponse] = {}
                for _ in batch:
                    answer = await call.read()
                    assert isinstance(answer, SubmitTransactionsResponse)
                    assert answer.request_id not in answers
                    answers[answer.request_id] = answer
                assert set(answers) == set(batch)
                return answers

            answers = await exchange(items)
            for request_id in ("valid-1", "valid-2"):
                assert answers[request_id].WhichOneof("result") == "created"
            assert answers["replayed"].created.SerializeToString() == earlier.SerializeToString()
            card_error = answers["invalid-card"].error
            assert card_error.code == code_pb2.INVALID_ARGUMENT
            assert set(field_violations(card_error)) == {"card_number"}
            assert BAD_PANS[1] not in str(card_error)
            two_error = answers["invalid-two"].error
            assert set(field_violations(two_error)) == {"currency", "country"}

            # The stream is still open after errors: more items, more answers.
            conflicting = request(0, prefix="s")
            conflicting.amount_minor += 1
            later = await exchange({"conflicting": conflicting, "after": request(9, prefix="s")})
            assert later["conflicting"].error.code == code_pb2.FAILED_PRECONDITION
            assert error_reason(later["conflicting"].error) == "IDEMPOTENCY_KEY_REUSED"
            assert later["after"].WhichOneof("result") == "created"

            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK
            # earlier + valid-1 + valid-2 + after
            assert api.counts() == {"transactions": 4, "idempotency_keys": 4, "outbox": 4}

    run(scenario())


def test_submit_stream_handles_a_large_batch(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(tmp_path) as api:
            items = [
                SubmitTransactionsRequest(request_id=str(i), transaction=request(i, prefix="bulk"))
                for i in range(2000)
            ]
            # Duplicates inside one stream: the in-flight registry or the store catches them.
            items += [
                SubmitTransactionsRequest(
                    request_id=f"dup-{i}", transaction=request(i, prefix="bulk")
                )
                for i in range(0, 2000, 40)
            ]
            answers = [answer async for answer in api.client.submit(iter(items))]
            assert sorted(a.request_id for a in answers) == sorted(i.request_id for i in items)
            results = Counter(a.error.code if a.HasField("error") else "created" for a in answers)
            assert set(results) <= {"created", code_pb2.ABORTED}
            assert api.counts()["transactions"] == 2000

    run(scenario())


def _batch(items: dict[str, CreateTransactionRequest]) -> SubmitTransactionBatch:
    return SubmitTransactionBatch(
        items=[
            SubmitTransactionsRequest(request_id=rid, transaction=tx) for rid, tx in items.items()
        ]
    )


async def _unary_status(api: Api, req: CreateTransactionRequest) -> status_pb2.Status:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.client.create(req)
    return rpc_error_status(raised.value)


def test_submit_batches_answers_every_item_in_order_like_create(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(tmp_path) as api:
            earlier = await api.client.create(request(0, prefix="b"))
            conflicting = request(0, prefix="b")
            conflicting.amount_minor += 1
            invalid_card = _broken(3, {"card_number": BAD_PANS[1]})
            invalid_two = _broken(4, {"currency": "eur", "country": "D"})
            items = {
                "valid-1": request(1, prefix="b"),
                "invalid-card": invalid_card,
                "replayed": request(0, prefix="b"),
                "valid-2": request(2, prefix="b", with_time=True),
                "invalid-two": invalid_two,
                # The same key as valid-1 in the same batch: valid-1 is still in flight.
                "same-key": request(1, prefix="b"),
            }
            call = api.client.submit_batches()
            await call.write(_batch(items))
            result = await call.read()
            assert isinstance(result, SubmitTransactionBatchResult)
            answers = {answer.request_id: answer for answer in result.items}
            # One answer per item, in the batch's order.
            assert [answer.request_id for answer in result.items] == list(items)

            created = {rid: answers[rid].created for rid in ("valid-1", "valid-2")}
            for rid, response in created.items():
                assert answers[rid].WhichOneof("result") == "created"
                tx = response.transaction
                assert uuid.UUID(tx.transaction_id).version == 7
                assert (tx.idempotency_key, tx.amount_minor) == (
                    items[rid].idempotency_key,
                    items[rid].amount_minor,
                )
                assert await api.client.get(tx.transaction_id) == tx
                # A retry of the item through the unary call replays its answer byte for byte.
                replay = await api.client.create(items[rid])
                assert replay.SerializeToString() == response.SerializeToString()
            assert created["valid-2"].transaction.occurred_at == items["valid-2"].occurred_at
            assert answers["replayed"].created.SerializeToString() == earlier.SerializeToString()

            # Errors carry exactly the status CreateTransaction gives for the same request.
            for rid in ("invalid-card", "invalid-two"):
                assert answers[rid].error == await _unary_status(api, items[rid])
            assert answers["invalid-card"].error.code == code_pb2.INVALID_ARGUMENT
            assert set(field_violations(answers["invalid-card"].error)) == {"card_number"}
            assert BAD_PANS[1] not in str(answers["invalid-card"].error)
            assert set(field_violations(answers["invalid-two"].error)) == {"currency", "country"}
            assert answers["same-key"].error.code == code_pb2.ABORTED
            assert error_reason(answers["same-key"].error) == "REQUEST_IN_FLIGHT"

            # earlier + valid-1 + valid-2: nothing stored for the failed items.
            assert api.counts() == {"transactions": 3, "idempotency_keys": 3, "outbox": 3}
            # The invalid items' keys were not taken: fixed, they are stored as new.
            fixed = request(3, prefix="bad")
            assert fixed.idempotency_key == invalid_card.idempotency_key
            stored = await api.client.create(fixed)
            assert stored.transaction.amount_minor == fixed.amount_minor

            # The stream goes on after failed items; an empty batch gets an empty result.
            await call.write(SubmitTransactionBatch())
            assert await call.read() == SubmitTransactionBatchResult()
            await call.write(_batch({"conflicting": conflicting, "after": request(9, prefix="b")}))
            later = await call.read()
            assert isinstance(later, SubmitTransactionBatchResult)
            assert [a.request_id for a in later.items] == ["conflicting", "after"]
            assert later.items[0].error == await _unary_status(api, conflicting)
            assert later.items[0].error.code == code_pb2.FAILED_PRECONDITION
            assert error_reason(later.items[0].error) == "IDEMPOTENCY_KEY_REUSED"
            assert later.items[1].WhichOneof("result") == "created"
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK
            assert api.counts() == {"transactions": 5, "idempotency_keys": 5, "outbox": 5}

    run(scenario())


def test_submit_batches_stores_valid_items_in_order_of_the_batch(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(tmp_path) as api:
            items = {f"o-{i}": request(i, prefix="order") for i in range(50)}
            result = await api.client.submit_batches(iter([_batch(items)])).read()
            assert isinstance(result, SubmitTransactionBatchResult)
            ids = [answer.created.transaction.transaction_id for answer in result.items]
            assert len(set(ids)) == 50
            with contextlib.closing(sqlite3.connect(api.settings.store_path)) as db:
                outbox_events = [
                    decode_transaction_created(bytes(payload), _headers(headers))
                    for payload, headers in db.execute(
                        "SELECT payload, headers FROM outbox ORDER BY seq"
                    )
                ]
            # The outbox (the order events are published in) follows the batch's order.
            assert [e.transaction.transaction_id for e in outbox_events] == ids
            # Event ids are time-ordered UUIDv7 like transaction ids.
            assert all(uuid.UUID(e.event_id).version == 7 for e in outbox_events)

    run(scenario())


def _headers(headers_json: str) -> list[tuple[str, bytes]]:
    return [(name, bytes.fromhex(value)) for name, value in json.loads(headers_json)]


def test_submit_batches_handles_large_batches_beyond_the_window(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(tmp_path, stream_window=64) as api:
            big = {str(i): request(i, prefix="bulk") for i in range(MAX_BATCH_ITEMS)}
            # A retry of every 40th item, inside one later batch, and small batches between.
            dups = {f"dup-{i}": request(i, prefix="bulk") for i in range(0, MAX_BATCH_ITEMS, 40)}
            small = [{f"s-{i}": request(i, prefix="small")} for i in range(20)]
            batches = [_batch(big), *(_batch(b) for b in small), _batch(dups)]
            results = [r async for r in api.client.submit_batches(iter(batches))]
            assert len(results) == len(batches)
            by_first = {r.items[0].request_id: r for r in results}
            for batch in batches:
                answered = by_first[batch.items[0].request_id]
                assert [a.request_id for a in answered.items] == [i.request_id for i in batch.items]
            answers = [answer for result in results for answer in result.items]
            outcomes = Counter(a.error.code if a.HasField("error") else "created" for a in answers)
            assert outcomes == {"created": MAX_BATCH_ITEMS + 20 + len(dups)}
            # The big batch took the whole window: it was stored before the retries were read,
            # so they replay its answers byte for byte.
            created = {a.request_id: a.created.SerializeToString() for a in answers}
            for rid in dups:
                assert created[rid] == created[rid.removeprefix("dup-")]
            assert api.counts()["transactions"] == MAX_BATCH_ITEMS + 20

    run(scenario())


def test_submit_batches_refuses_a_batch_whose_result_a_client_could_not_receive(
    tmp_path: Path,
) -> None:
    """A batch's result is one message, which a default client receives up to 4 MiB: a batch
    of more items than MAX_BATCH_ITEMS, or whose result could exceed that, ends the stream with
    INVALID_ARGUMENT (BATCH_TOO_LARGE) once the batches read before it are answered, and
    nothing of it is stored. Before, such a batch was stored and its result lost."""

    async def refused(
        api: Api, batches: list[SubmitTransactionBatch]
    ) -> tuple[list[Any], status_pb2.Status]:
        call = api.client.submit_batches()
        for batch in batches:
            await call.write(batch)
        await call.done_writing()
        results = []
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while (result := await call.read()) is not grpc.aio.EOF:
                results.append(result)
        assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return results, rpc_error_status(ended.value)

    async def scenario() -> None:
        async with running_api(tmp_path) as api:
            first = _batch({"first": request(0, prefix="before")})
            too_many = _batch(
                {str(i): request(i, prefix="many") for i in range(MAX_BATCH_ITEMS + 1)}
            )
            results, status = await refused(api, [first, too_many])
            assert [[a.request_id for a in r.items] for r in results] == [["first"]]
            assert results[0].items[0].WhichOneof("result") == "created"
            assert error_reason(status) == "BATCH_TOO_LARGE"
            assert status.message == (
                f"a batch holds at most {MAX_BATCH_ITEMS:,} items; this one holds "
                f"{MAX_BATCH_ITEMS + 1:,}; nothing of it was stored: send its items in smaller "
                "batches, with the same idempotency keys"
            )
            assert api.counts() == {"transactions": 1, "idempotency_keys": 1, "outbox": 1}

            # Few enough items, but long enough that their answers could pass 4 MiB.
            long_ids = _batch(
                {f"{i:04d}" + "r" * 3_500: request(i, prefix="long") for i in range(900)}
            )
            assert long_ids.ByteSize() < 4 * 1024 * 1024  # the server reads it
            results, status = await refused(api, [long_ids])
            assert results == []
            assert error_reason(status) == "BATCH_TOO_LARGE"
            assert "could reach" in status.message
            assert api.counts()["transactions"] == 1

            # The most items a batch may hold are answered, through a default channel.
            most = _batch({str(i): request(i, prefix="most") for i in range(MAX_BATCH_ITEMS)})
            answered = [r async for r in api.client.submit_batches(iter([most]))]
            assert [len(r.items) for r in answered] == [MAX_BATCH_ITEMS]
            assert api.counts()["transactions"] == 1 + MAX_BATCH_ITEMS

    run(scenario())


def test_health_serving_then_not_serving_on_shutdown(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(tmp_path) as api:
            check = api.channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            watch = api.channel.unary_stream(
                "/grpc.health.v1.Health/Watch",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            for service in ("", SERVICE_NAME):
                reply = await check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            watching = watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            first = await watching.read()
            assert isinstance(first, health_pb2.HealthCheckResponse)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            api.stopping.set()
            second = await watching.read()
            assert isinstance(second, health_pb2.HealthCheckResponse)
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watching.cancel()

    run(scenario())


def test_reflection_lists_the_services(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(tmp_path) as api:
            reflect = api.channel.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            call = reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names: set[str] = set()
            async for reply in call:
                names.update(s.name for s in reply.list_services_response.service)
            assert {"txguard.v1.TransactionService", "grpc.health.v1.Health"} <= names

    run(scenario())


def test_graceful_shutdown_finishes_calls_in_flight(tmp_path: Path) -> None:
    acknowledged: list[str] = []
    refused: Counter[grpc.StatusCode] = Counter()

    async def scenario() -> None:
        async with running_api(tmp_path) as api:
            some_done = asyncio.Event()

            async def create(i: int) -> None:
                try:
                    answer = await api.client.create(request(i, prefix="shutdown"))
                except grpc.aio.AioRpcError as error:
                    refused[error.code()] += 1
                    return
                acknowledged.append(answer.transaction.transaction_id)
                if len(acknowledged) >= 20:
                    some_done.set()

            tasks = [asyncio.create_task(create(i)) for i in range(500)]
            await some_done.wait()
            api.stopping.set()
            await asyncio.gather(*tasks)

    run(scenario())
    # Calls not yet taken by a handler are refused by gRPC (UNAVAILABLE, or CANCELLED for calls
    # queued inside the server); none of them stored anything.
    assert set(refused) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    with contextlib.closing(sqlite3.connect(tmp_path / "txguard.db")) as db:
        stored = {row[0] for row in db.execute("SELECT transaction_id FROM transactions")}
    # Every call a handler had taken was finished, not cut off: stored exactly what was answered.
    assert stored == set(acknowledged)


def test_card_numbers_stay_out_of_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="txguard")

    async def scenario() -> None:
        async with running_api(tmp_path) as api:
            created = await api.client.create(request(3))
            await api.client.create(request(3))
            with pytest.raises(grpc.aio.AioRpcError):
                await api.client.create(_broken(4, {"card_number": BAD_PANS[2], "amount_minor": 0}))
            with pytest.raises(grpc.aio.AioRpcError):
                await api.client.create(_broken(5, {"account_id": ""}))
            assert created.transaction.transaction_id in caplog.text

    run(scenario())
    assert "accepted transaction" in caplog.text
    assert "rejected a transaction" in caplog.text
    for pan in (PANS[3], BAD_PANS[2], PANS[5]):
        assert pan not in caplog.text


def test_port_in_use_names_the_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = _settings(tmp_path, f"127.0.0.1:{port}")
        with pytest.raises(ConfigError, match="TXGUARD_GRPC_ADDR"):
            asyncio.run(serve(settings, asyncio.Event()))


def test_missing_card_key_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"TXGUARD_HOME": str(tmp_path), "TXGUARD_GRPC_ADDR": "127.0.0.1:0"}
    )
    with pytest.raises(ConfigError, match="TXGUARD_CARD_TOKEN_KEY"):
        asyncio.run(serve(settings, asyncio.Event()))
