"""`txguard.v1.TransactionService`: validate, tokenize, deduplicate, hand over to the writer.

Steps of one create, in order (each may end it with a status):
1. validate every field                          -> INVALID_ARGUMENT with BadRequest
2. tokenize the card and drop the PAN from the request
3. claim (client, key) in the in-flight registry  -> ABORTED if already in flight here
4. build the record and submit it to the writer  (group commit with other requests)
5. answer from the write result: new, replay of the stored response, FAILED_PRECONDITION when
   the key was used for another payload, UNAVAILABLE when the store failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Final, NoReturn, TypeAlias

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import Histogram

from txguard import clock
from txguard.config import TRANSACTIONS_TOPIC
from txguard.observability import metrics
from txguard.schema.v1 import service_pb2_grpc
from txguard.schema.v1.service_pb2 import (
    CreateTransactionRequest,
    CreateTransactionResponse,
    GetTransactionRequest,
    GetTransactionResponse,
    SubmitTransactionsRequest,
    SubmitTransactionsResponse,
)
from txguard.store.interface import IdempotencyKeyReused, NewTransaction, RecordOutcome
from txguard.transactions.card import CardTokenizer
from txguard.transactions.idempotency import InFlightRequests, request_fingerprint
from txguard.transactions.validation import FieldViolation, validate_create_request
from txguard.transactions.writer import (
    TransactionReader,
    TransactionWriter,
    WriteResult,
    accepted_transaction,
)

log = logging.getLogger(__name__)

CLIENT_ID_METADATA: Final = "x-client-id"
MAX_CLIENT_ID_CHARS: Final = 128
# Items of one SubmitTransactions stream in flight or answered but not yet sent back.
DEFAULT_STREAM_WINDOW: Final = 512
ERROR_DOMAIN: Final = "txguard.v1"
# Values of the `method` label of the API latency histogram.
CREATE_METHOD: Final = "CreateTransaction"
SUBMIT_METHOD: Final = "SubmitTransactions"
GET_METHOD: Final = "GetTransaction"

CreateResult: TypeAlias = CreateTransactionResponse | status_pb2.Status


def _status(
    code: int, message: str, *details: error_details_pb2.BadRequest | error_details_pb2.ErrorInfo
) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return status


def _error_info(reason: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)


def invalid_argument(violations: Sequence[FieldViolation]) -> status_pb2.Status:
    """INVALID_ARGUMENT naming every bad field in a google.rpc.BadRequest."""
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in violations
        ]
    )
    fields = ", ".join(v.field for v in violations)
    return _status(
        code_pb2.INVALID_ARGUMENT, f"invalid request; fields in error: {fields}", bad_request
    )


ALREADY_IN_FLIGHT: Final = _status(
    code_pb2.ABORTED,
    "a request with this idempotency key is still being processed; retry with the same key "
    "after a short backoff",
    _error_info("REQUEST_IN_FLIGHT"),
)
KEY_REUSED: Final = _status(
    code_pb2.FAILED_PRECONDITION,
    "this idempotency key was already used for a different request; do not retry: send a new "
    "transaction under a new key",
    _error_info("IDEMPOTENCY_KEY_REUSED"),
)
STORE_UNAVAILABLE: Final = _status(
    code_pb2.UNAVAILABLE,
    "the transaction could not be stored; nothing was recorded; retry with the same key",
    _error_info("STORE_UNAVAILABLE"),
)
MISSING_CLIENT_ID: Final = _status(
    code_pb2.UNAUTHENTICATED,
    f"missing or invalid {CLIENT_ID_METADATA} metadata: every call must name its client "
    f"(1-{MAX_CLIENT_ID_CHARS} printable characters)",
    _error_info("CLIENT_ID_MISSING"),
)
EMPTY_TRANSACTION_ID: Final = invalid_argument(
    [FieldViolation("transaction_id", "transaction_id is required")]
)
TRANSACTION_NOT_FOUND: Final = _status(code_pb2.NOT_FOUND, "no such transaction")


class ApiMetrics:
    """The API's metric children, resolved once: answering a request costs no label lookup."""

    def __init__(self) -> None:
        self.rejected = metrics.Children(metrics.TRANSACTIONS_REJECTED, "reason")
        self.rejected.precreate(metrics.REJECTION_REASONS)
        self.field_violations = metrics.Children(metrics.TRANSACTION_FIELD_VIOLATIONS, "field")
        self._latency: dict[tuple[str, int], Histogram] = {}

    def answered(self, method: str, result: object, started: float) -> None:
        """Observe the time since `started` (perf_counter) under the answer's status code."""
        code = result.code if isinstance(result, status_pb2.Status) else code_pb2.OK
        child = self._latency.get((method, code))
        if child is None:
            child = metrics.API_REQUEST_DURATION.labels(method, code_pb2.Code.Name(code))
            self._latency[(method, code)] = child
        child.observe(time.perf_counter() - started)

    def invalid(self, violations: Sequence[FieldViolation]) -> None:
        self.rejected["invalid_argument"].inc()
        for field in {v.field for v in violations}:
            self.field_violations[field].inc()


async def _abort(context: grpc.aio.ServicerContext, status: status_pb2.Status) -> NoReturn:
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def _client_id(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_ID_METADATA:
            if (
                isinstance(value, str)
                and 0 < len(value) <= MAX_CLIENT_ID_CHARS
                and value.isprintable()
                and not value.isspace()
            ):
                return value
            return None
    return None


class TransactionService(service_pb2_grpc.TransactionServiceServicer):
    """The gRPC servicer; all state lives on the event loop thread except the writer's store."""

    def __init__(
        self,
        *,
        tokenizer: CardTokenizer,
        writer: TransactionWriter,
        reader: TransactionReader,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        now_us: Callable[[], int] = clock.now_us,
        transactions_topic: str = TRANSACTIONS_TOPIC,
    ) -> None:
        self._transactions_topic = transactions_topic
        self._tokenizer = tokenizer
        self._writer = writer
        self._reader = reader
        self._stream_window = stream_window
        self._now_us = now_us
        self._in_flight = InFlightRequests()
        self.metrics = ApiMetrics()

    async def CreateTransaction(
        self, request: CreateTransactionRequest, context: grpc.aio.ServicerContext
    ) -> CreateTransactionResponse:
        client_id = _client_id(context)
        if client_id is None:
            self._reject_unidentified(CREATE_METHOD, time.perf_counter())
            await _abort(context, MISSING_CLIENT_ID)
        future: asyncio.Future[CreateResult] = asyncio.get_running_loop().create_future()

        def resolve(result: CreateResult) -> None:
            if not future.done():  # the caller may have gone away meanwhile
                future.set_result(result)

        rejection = self.start_create(client_id, request, resolve)
        result = rejection if rejection is not None else await future
        if isinstance(result, status_pb2.Status):
            await _abort(context, result)
        return result

    async def GetTransaction(
        self, request: GetTransactionRequest, context: grpc.aio.ServicerContext
    ) -> GetTransactionResponse:
        started = time.perf_counter()
        result = await self._get_transaction(_client_id(context), request)
        self.metrics.answered(GET_METHOD, result, started)
        if isinstance(result, status_pb2.Status):
            await _abort(context, result)
        return result

    async def _get_transaction(
        self, client_id: str | None, request: GetTransactionRequest
    ) -> GetTransactionResponse | status_pb2.Status:
        if client_id is None:
            return MISSING_CLIENT_ID
        if not request.transaction_id:
            return EMPTY_TRANSACTION_ID
        tx = await self._reader.get_transaction(request.transaction_id)
        # Another client's transaction is as invisible as a missing one.
        if tx is None or tx.client_id != client_id:
            return TRANSACTION_NOT_FOUND
        response = GetTransactionResponse()
        response.transaction.CopyFrom(tx)
        return response

    async def SubmitTransactions(
        self,
        request_iterator: AsyncIterable[SubmitTransactionsRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[SubmitTransactionsResponse]:
        """Items are processed concurrently; responses come in completion order."""
        client_id = _client_id(context)
        if client_id is None:
            self._reject_unidentified(SUBMIT_METHOD, time.perf_counter())
            await _abort(context, MISSING_CLIENT_ID)
        stream = _SubmitStream(self, client_id, self._stream_window)
        async for response in stream.run(request_iterator):
            yield response

    def start_create(
        self,
        client_id: str,
        request: CreateTransactionRequest,
        on_done: Callable[[CreateResult], None],
        *,
        method: str = CREATE_METHOD,
    ) -> status_pb2.Status | None:
        """Steps 1-4; returns the rejection, or None when `on_done` will receive the result."""
        started = time.perf_counter()
        now_us = self._now_us()
        violations = validate_create_request(request, now_us)
        pan = request.card_number
        request.ClearField("card_number")
        if violations:
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "rejected a transaction of client %s: invalid %s",
                    client_id,
                    ", ".join(v.field for v in violations),
                    extra=_request_ids(client_id, request),
                )
            rejection = invalid_argument(violations)
            self.metrics.invalid(violations)
            self.metrics.answered(method, rejection, started)
            return rejection
        card = self._tokenizer.tokenize(pan)
        del pan
        key = request.idempotency_key
        if not self._in_flight.try_claim(client_id, key):
            log.debug(
                "client %s retried an idempotency key still in flight",
                client_id,
                extra=_request_ids(client_id, request),
            )
            self.metrics.rejected["request_in_flight"].inc()
            self.metrics.answered(method, ALREADY_IN_FLIGHT, started)
            return ALREADY_IN_FLIGHT
        try:
            fingerprint = request_fingerprint(client_id, request, card.token)
            record, response = accepted_transaction(
                client_id=client_id,
                request=request,
                card=card,
                fingerprint=fingerprint,
                now_us=now_us,
                topic=self._transactions_topic,
            )

            def recorded(result: WriteResult) -> None:
                # The claim ends with the write, not with the call: a caller that gave up and
                # retries at once gets ABORTED until the first attempt's outcome is stored.
                self._in_flight.release(client_id, key)
                answer = _answer(client_id, record, response, result, self.metrics)
                self.metrics.answered(method, answer, started)
                on_done(answer)

            self._writer.submit(record, recorded)
        except BaseException:
            self._in_flight.release(client_id, key)
            raise
        return None

    def _reject_unidentified(self, method: str, started: float) -> None:
        self.metrics.rejected["client_id_missing"].inc()
        self.metrics.answered(method, MISSING_CLIENT_ID, started)


def _request_ids(client_id: str, request: CreateTransactionRequest) -> dict[str, str]:
    """The `extra` fields of a log line about one create request."""
    return {"client_id": client_id, "account_id": request.account_id}


def _answer(
    client_id: str,
    record: NewTransaction,
    response: CreateTransactionResponse,
    result: WriteResult,
    api_metrics: ApiMetrics,
) -> CreateResult:
    transaction = record.transaction
    if isinstance(result, RecordOutcome):
        if result.created:
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "accepted transaction %s for client %s",
                    transaction.transaction_id,
                    client_id,
                    extra={
                        "client_id": client_id,
                        "transaction_id": transaction.transaction_id,
                        "event_id": record.outbox_event.event_id,
                        "account_id": transaction.account_id,
                    },
                )
            metrics.TRANSACTIONS_ACCEPTED.inc()
            return response
        metrics.TRANSACTIONS_REPLAYED.inc()
        replay = CreateTransactionResponse.FromString(result.response)
        log.debug(
            "replayed transaction %s for client %s",
            replay.transaction.transaction_id,
            client_id,
            extra={
                "client_id": client_id,
                "transaction_id": replay.transaction.transaction_id,
                "account_id": replay.transaction.account_id,
            },
        )
        return replay
    if isinstance(result, IdempotencyKeyReused):
        log.debug(
            "rejected a transaction of client %s: idempotency key reused",
            client_id,
            extra={"client_id": client_id, "account_id": transaction.account_id},
        )
        api_metrics.rejected["idempotency_key_reused"].inc()
        return KEY_REUSED
    api_metrics.rejected["store_unavailable"].inc()
    return STORE_UNAVAILABLE


class _StreamFailed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _SubmitStream:
    """One SubmitTransactions call: a reader task admits items, the handler yields answers.

    At most `window` items are in flight or answered-but-unsent: an item's slot is freed when its
    answer is handed to gRPC, so a client that stops reading stops being read.
    """

    def __init__(self, service: TransactionService, client_id: str, window: int) -> None:
        self._service = service
        self._client_id = client_id
        self._window = asyncio.Semaphore(window)
        # None marks the end: the input is exhausted and every item has been answered.
        self._answers: asyncio.Queue[SubmitTransactionsResponse | _StreamFailed | None] = (
            asyncio.Queue()
        )
        self._outstanding = 0
        self._input_done = False

    async def run(
        self, requests: AsyncIterable[SubmitTransactionsRequest]
    ) -> AsyncIterator[SubmitTransactionsResponse]:
        reader = asyncio.create_task(self._read(requests))
        try:
            while (answer := await self._answers.get()) is not None:
                if isinstance(answer, _StreamFailed):
                    raise answer.error
                self._window.release()
                yield answer
        finally:
            # Cancelled or failed call: stop reading. Writes already submitted still complete.
            reader.cancel()

    async def _read(self, requests: AsyncIterable[SubmitTransactionsRequest]) -> None:
        try:
            async for item in requests:
                await self._window.acquire()
                self._admit(item)
        except Exception as exc:
            self._answers.put_nowait(_StreamFailed(exc))
            return
        self._input_done = True
        if self._outstanding == 0:
            self._answers.put_nowait(None)

    def _admit(self, item: SubmitTransactionsRequest) -> None:
        request_id = item.request_id

        def answered(result: CreateResult) -> None:
            self._outstanding -= 1
            self._answers.put_nowait(_stream_answer(request_id, result))
            if self._input_done and self._outstanding == 0:
                self._answers.put_nowait(None)

        self._outstanding += 1
        try:
            rejection = self._service.start_create(
                self._client_id, item.transaction, answered, method=SUBMIT_METHOD
            )
        except BaseException:
            self._outstanding -= 1
            raise
        if rejection is not None:
            answered(rejection)


def _stream_answer(request_id: str, result: CreateResult) -> SubmitTransactionsResponse:
    if isinstance(result, status_pb2.Status):
        return SubmitTransactionsResponse(request_id=request_id, error=result)
    return SubmitTransactionsResponse(request_id=request_id, created=result)
