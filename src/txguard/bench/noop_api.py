"""A transaction API that answers every request at once and does nothing else: gRPC's own cost.

`python -m txguard.bench.noop_api PORT` serves TransactionService's three ingestion RPCs (and
gRPC health checking) on
127.0.0.1:PORT with the same gRPC server txguard's API runs (grpc.aio, one event loop), until
SIGTERM or SIGINT. Every transaction gets the same answer, built once at start-up the way the
real API builds its answers, so that answers have the real size: no validation, no card
tokenizing, no store, no Kafka. What this process and its client spend per transaction is what
any API written on grpcio spends before doing any work of its own.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
from collections.abc import AsyncIterable, AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from txguard.clock import now_us
from txguard.schema.v1 import service_pb2_grpc
from txguard.schema.v1.service_pb2 import (
    CreateTransactionRequest,
    CreateTransactionResponse,
    GetTransactionRequest,
    GetTransactionResponse,
    SubmitTransactionBatch,
    SubmitTransactionBatchResult,
    SubmitTransactionsRequest,
    SubmitTransactionsResponse,
)
from txguard.simulate.load_generator import TransactionFactory
from txguard.transactions.card import CardTokenizer
from txguard.transactions.writer import accepted_transaction


def fixed_answer() -> CreateTransactionResponse:
    """The answer of the real API to one simulated request (the store never sees it)."""
    request = TransactionFactory(accounts=1, seed=1).next_request()
    card = CardTokenizer(secrets.token_bytes(32)).tokenize(request.card_number)
    _record, response = accepted_transaction(
        client_id="txguard-bench",
        request=request,
        card=card,
        fingerprint=bytes(32),
        now_us=now_us(),
        topic="txguard.transactions.v1",
    )
    return response


class NoOpTransactionService(service_pb2_grpc.TransactionServiceServicer):
    """Answers each transaction with `answer`; keeps each stream's request ids and order."""

    def __init__(self, answer: CreateTransactionResponse) -> None:
        self._answer = answer

    async def CreateTransaction(
        self, request: CreateTransactionRequest, context: grpc.aio.ServicerContext
    ) -> CreateTransactionResponse:
        return self._answer

    async def GetTransaction(
        self, request: GetTransactionRequest, context: grpc.aio.ServicerContext
    ) -> GetTransactionResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the no-op API stores nothing")
        raise AssertionError("abort returned")  # pragma: no cover

    async def SubmitTransactions(
        self,
        request_iterator: AsyncIterable[SubmitTransactionsRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[SubmitTransactionsResponse]:
        async for message in request_iterator:
            yield SubmitTransactionsResponse(request_id=message.request_id, created=self._answer)

    async def SubmitTransactionBatches(
        self,
        request_iterator: AsyncIterable[SubmitTransactionBatch],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[SubmitTransactionBatchResult]:
        async for batch in request_iterator:
            result = SubmitTransactionBatchResult()
            for item in batch.items:
                result.items.add(request_id=item.request_id, created=self._answer)
            yield result


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:`port` until SIGTERM or SIGINT."""
    server = grpc.aio.server(options=(("grpc.so_reuseport", 0),))
    service_pb2_grpc.add_TransactionServiceServicer_to_server(
        NoOpTransactionService(fixed_answer()), server
    )
    # Reports SERVING from the start: how the harness sees that it listens, as for the real API.
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await server.start()
    await stopping.wait()
    await server.stop(1.0)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m txguard.bench.noop_api PORT", file=sys.stderr)
        return 2
    asyncio.run(serve(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
