"""SubmitTransactionBatches flow control and hand-over to the writer, with a writer that holds
every record until the test lets it go (no gRPC, no store)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any, cast

import grpc
import pytest

from txguard.schema.luhn import with_check_digit
from txguard.schema.responses import create_transaction_response
from txguard.schema.v1.service_pb2 import (
    CreateTransactionRequest,
    SubmitTransactionBatch,
    SubmitTransactionBatchResult,
    SubmitTransactionsRequest,
)
from txguard.store.interface import NewTransaction, RecordOutcome
from txguard.transactions.batch_limits import MAX_BATCH_ITEMS
from txguard.transactions.card import CardTokenizer
from txguard.transactions.service import TransactionService
from txguard.transactions.writer import OnRecorded, TransactionReader, TransactionWriter

PAN = with_check_digit("411111111111111")


class HeldWriter:
    """Records what is submitted; completes it only when told to."""

    def __init__(self) -> None:
        self.pending: list[tuple[NewTransaction, OnRecorded]] = []
        self.submitted = 0

    def submit(self, record: NewTransaction, on_recorded: OnRecorded) -> None:
        self.pending.append((record, on_recorded))
        self.submitted += 1

    def complete_all(self) -> None:
        pending, self.pending = self.pending, []
        for record, on_recorded in pending:
            response = create_transaction_response(record.transaction.SerializeToString())
            on_recorded(RecordOutcome(created=True, response=response))


class Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-client-id", "unit"),)


def _service(writer: HeldWriter, window: int) -> TransactionService:
    return TransactionService(
        tokenizer=CardTokenizer(bytes(range(32))),
        writer=cast(TransactionWriter, writer),
        reader=cast(TransactionReader, None),
        stream_window=window,
    )


def _batch(start: int, size: int) -> SubmitTransactionBatch:
    return SubmitTransactionBatch(
        items=[
            SubmitTransactionsRequest(
                request_id=str(i),
                transaction=CreateTransactionRequest(
                    idempotency_key=f"key-{i}",
                    account_id="account",
                    amount_minor=100 + i,
                    currency="EUR",
                    terminal_id="terminal",
                    card_number=PAN,
                ),
            )
            for i in range(start, start + size)
        ]
    )


class Feed:
    """The client's side of the stream: counts how many batches the server has pulled."""

    def __init__(self, batches: list[SubmitTransactionBatch]) -> None:
        self.batches = batches
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[SubmitTransactionBatch]:
        for batch in self.batches:
            self.pulled += 1
            yield batch


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coroutine)


def test_a_batch_is_handed_to_the_writer_whole_and_answered_once_in_order() -> None:
    async def scenario() -> None:
        writer = HeldWriter()
        service = _service(writer, window=512)
        feed = Feed([_batch(0, 5)])
        results = service.SubmitTransactionBatches(
            feed.__aiter__(), cast(grpc.aio.ServicerContext, Context())
        )
        first = asyncio.ensure_future(anext(results))
        await _settle()
        # All five valid items reached the writer together; none is answered before the write.
        assert writer.submitted == 5 and not first.done()
        writer.complete_all()
        result = await first
        assert isinstance(result, SubmitTransactionBatchResult)
        assert [a.request_id for a in result.items] == [str(i) for i in range(5)]
        assert all(a.WhichOneof("result") == "created" for a in result.items)

    run(scenario())


def reading(
    service: TransactionService, feed: Feed, context: Context
) -> tuple[list[SubmitTransactionBatchResult], asyncio.Task[None]]:
    """The call's results as they come, and the task that reads them."""
    results = service.SubmitTransactionBatches(
        feed.__aiter__(), cast(grpc.aio.ServicerContext, context)
    )
    answers: list[SubmitTransactionBatchResult] = []

    async def read() -> None:
        async for result in results:
            answers.append(result)

    return answers, asyncio.create_task(read())


def test_batches_are_read_only_while_their_items_fit_the_window() -> None:
    async def scenario() -> None:
        writer = HeldWriter()
        service = _service(writer, window=10)
        # 4 + 4 fit the window of 10; the third batch (4) waits; the fourth (30, larger than the
        # window) then waits for everything before it to be answered and sent.
        feed = Feed([_batch(0, 4), _batch(4, 4), _batch(8, 4), _batch(12, 30), _batch(42, 1)])
        answers, reader = reading(service, feed, Context())
        await _settle()
        assert (feed.pulled, writer.submitted) == (3, 8)
        writer.complete_all()
        await _settle()
        assert (feed.pulled, writer.submitted, len(answers)) == (4, 12, 2)
        writer.complete_all()
        await _settle()
        assert (feed.pulled, writer.submitted, len(answers)) == (5, 42, 3)
        writer.complete_all()
        await _settle()
        assert (writer.submitted, len(answers)) == (43, 4)
        writer.complete_all()
        await asyncio.wait_for(reader, 5)
        assert [len(a.items) for a in answers] == [4, 4, 4, 30, 1]

    run(scenario())


class Aborted(Exception):
    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


class AbortingContext(Context):
    async def abort_with_status(self, status: grpc.Status) -> None:
        raise Aborted(status)


def test_a_batch_too_large_ends_the_stream_after_the_batches_in_flight_are_answered() -> None:
    async def scenario() -> None:
        writer = HeldWriter()
        service = _service(writer, window=2_000)
        # The refused batch fits the window: it is read, and refused, while the first batch
        # is still being written; the batch after it is never read.
        feed = Feed([_batch(0, 3), _batch(3, MAX_BATCH_ITEMS + 1), _batch(2_000, 2)])
        answers, reader = reading(service, feed, AbortingContext())
        await _settle()
        assert (feed.pulled, writer.submitted, answers, reader.done()) == (2, 3, [], False)
        writer.complete_all()
        with pytest.raises(Aborted) as ended:
            await asyncio.wait_for(reader, 5)
        assert [len(a.items) for a in answers] == [3]
        assert ended.value.status.code == grpc.StatusCode.INVALID_ARGUMENT
        assert (feed.pulled, writer.submitted) == (2, 3)

    run(scenario())
