"""A small typed client of the transaction API: sets x-client-id, retries what may be retried."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from typing import Final

import grpc
from google.rpc import error_details_pb2, status_pb2

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
from txguard.schema.v1.transaction_pb2 import Transaction

CLIENT_ID_METADATA: Final = "x-client-id"
STATUS_DETAILS_METADATA: Final = "grpc-status-details-bin"
# ABORTED: the same key is still in flight. UNAVAILABLE: nothing was stored, or the server was
# unreachable. Both are safe to retry with the same idempotency key; nothing else is.
RETRYABLE_CODES: Final = frozenset({grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE})


class TransactionClient:
    """Calls `txguard.v1.TransactionService` on an asyncio channel as one client id."""

    def __init__(self, channel: grpc.aio.Channel, client_id: str) -> None:
        self._stub = service_pb2_grpc.TransactionServiceStub(channel)
        self._metadata = ((CLIENT_ID_METADATA, client_id),)

    async def create(
        self, request: CreateTransactionRequest, *, timeout: float | None = None
    ) -> CreateTransactionResponse:
        """One attempt; raises grpc.aio.AioRpcError on any error status."""
        return await self._stub.CreateTransaction(request, metadata=self._metadata, timeout=timeout)

    async def create_with_retry(
        self,
        request: CreateTransactionRequest,
        *,
        attempts: int = 10,
        initial_backoff: float = 0.01,
        max_backoff: float = 1.0,
        timeout: float | None = None,
    ) -> CreateTransactionResponse:
        """Create, retrying ABORTED and UNAVAILABLE with jittered exponential backoff.

        Safe because the request keeps its idempotency key: at most one transaction is stored.
        """
        backoff = initial_backoff
        for attempt in range(1, attempts + 1):
            try:
                return await self.create(request, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE_CODES or attempt == attempts:
                    raise
            await asyncio.sleep(random.uniform(0, backoff))
            backoff = min(backoff * 2, max_backoff)
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, transaction_id: str, *, timeout: float | None = None) -> Transaction:
        response = await self._stub.GetTransaction(
            GetTransactionRequest(transaction_id=transaction_id),
            metadata=self._metadata,
            timeout=timeout,
        )
        return response.transaction

    def submit(
        self,
        requests: AsyncIterator[SubmitTransactionsRequest]
        | Iterator[SubmitTransactionsRequest]
        | None = None,
        *,
        timeout: float | None = None,
    ) -> grpc.aio.StreamStreamCall[SubmitTransactionsRequest, SubmitTransactionsResponse]:
        """Open a SubmitTransactions stream.

        With `requests`, gRPC sends them; without, use `call.write()` and `call.done_writing()`.
        Responses (iterate the call, or `call.read()`) come in completion order, not request
        order: match them by request_id.
        """
        return self._stub.SubmitTransactions(requests, metadata=self._metadata, timeout=timeout)

    def submit_batches(
        self,
        batches: AsyncIterator[SubmitTransactionBatch]
        | Iterator[SubmitTransactionBatch]
        | None = None,
        *,
        timeout: float | None = None,
    ) -> grpc.aio.StreamStreamCall[SubmitTransactionBatch, SubmitTransactionBatchResult]:
        """Open a SubmitTransactionBatches stream: many items per message, answers batched too.

        With `batches`, gRPC sends them; without, use `call.write()` and `call.done_writing()`.
        Every batch is answered by one result whose items answer the batch's items in order;
        results come in completion order, not batch order: match items by request_id.
        """
        return self._stub.SubmitTransactionBatches(
            batches, metadata=self._metadata, timeout=timeout
        )


def error_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The google.rpc.Status carried by an error (trailer grpc-status-details-bin), if any."""
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_METADATA and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def field_violations(status: status_pb2.Status) -> dict[str, str]:
    """Field name -> description of every google.rpc.BadRequest violation in `status`."""
    violations: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            for violation in bad_request.field_violations:
                violations[violation.field] = violation.description
    return violations
