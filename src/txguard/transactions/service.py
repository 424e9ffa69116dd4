"""`txguard.v1.TransactionService`: validate, tokenize, deduplicate, hand over to the writer.

Steps of one create, in order (each may end it with a status):
1. validate every field                          -> INVALID_ARGUMENT with BadRequest
2. tokenize the card and drop the PAN from the request
3. claim (client, key) in the in-flight registry  -> ABORTED if already in flight here
4. build the record and submit it to the writer  (group commit with other requests)
5. answer from the write result: new, replay of the stored response, FAILED_PRECONDITION when
   the key was used for another payload, UNAVAILABLE when the store failed.

The three ingestion RPCs share these steps: CreateTransaction runs them for one request, each
SubmitTransactions item for its own, and a SubmitTransactionBatches message for all its items,
handing its valid items to the writer only after all are prepared, so that they share a commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Final, Generic, NoReturn, TypeAlias, TypeVar

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
    SubmitTransactionBatch,
    SubmitTransactionBatchResult,
    SubmitTransactionsRequest,
    SubmitTransactionsResponse,
)
from txguard.store.interface import IdempotencyKeyReused, NewTransaction, RecordOutcome
from txguard.transactions.batch_limits import batch_too_large
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
# Items of one SubmitTransactions or SubmitTransactionBatches stream in flight or answered but not
# yet sent back.
DEFAULT_STREAM_WINDOW: Final = 512
ERROR_DOMAIN: Final = "txguard.v1"
# Values of the `method` label of the API latency histogram.
CREATE_METHOD: Final = "CreateTransaction"
SUBMIT_METHOD: Final = "SubmitTransactions"
BATCH_METHOD: Final = "SubmitTransactionBatches"
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

    async def SubmitTransactionBatches(
        self,
        request_iterator: AsyncIterable[SubmitTransactionBatch],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[SubmitTransactionBatchResult]:
        """Batches are processed concurrently; one result per batch, in completion order."""
        client_id = _client_id(context)
        if client_id is None:
            self._reject_unidentified(BATCH_METHOD, time.perf_counter())
            await _abort(context, MISSING_CLIENT_ID)
        stream = _BatchStream(self, client_id, self._stream_window)
        try:
            async for result in stream.run(request_iterator):
                yield result
        except _StreamRefused as refused:
            await _abort(context, refused.status)

    def start_create(
        self,
        client_id: str,
        request: CreateTransactionRequest,
        on_done: Callable[[CreateResult], None],
        *,
        method: str = CREATE_METHOD,
    ) -> status_pb2.Status | None:
        """Steps 1-4; returns the rejection, or None when `on_done` will receive the result."""
        prepared = self._prepare(client_id, request, method)
        if isinstance(prepared, status_pb2.Status):
            return prepared
        self._submit(prepared, on_done)
        return None

    def start_creates(
        self,
        client_id: str,
        requests: Sequence[CreateTransactionRequest],
        on_done: Callable[[int, CreateResult], None],
        *,
        method: str = BATCH_METHOD,
    ) -> None:
        """Steps 1-4 for many requests: `on_done(index, result)` once per request.

        A rejection is passed to `on_done` at once. The valid requests are handed to the writer
        one right after the other, once all are prepared, so that they usually share one commit.
        """
        prepared: list[tuple[int, _Prepared]] = []
        try:
            for index, request in enumerate(requests):
                outcome = self._prepare(client_id, request, method)
                if isinstance(outcome, status_pb2.Status):
                    on_done(index, outcome)
                else:
                    prepared.append((index, outcome))
        except BaseException:
            for _, unsubmitted in prepared:
                self._in_flight.release(client_id, unsubmitted.key)
            raise
        for position, (index, item) in enumerate(prepared):
            try:
                self._submit(item, _bind_index(on_done, index))
            except BaseException:
                # _submit released its own claim; the later items were never handed over.
                for _, unsubmitted in prepared[position + 1 :]:
                    self._in_flight.release(client_id, unsubmitted.key)
                raise

    def _prepare(
        self, client_id: str, request: CreateTransactionRequest, method: str
    ) -> _Prepared | status_pb2.Status:
        """Steps 1-3 and the record of step 4; the claim on the key is held by the result."""
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
        except BaseException:
            self._in_flight.release(client_id, key)
            raise
        return _Prepared(client_id, key, record, response, method, started)

    def _submit(self, prepared: _Prepared, on_done: Callable[[CreateResult], None]) -> None:
        """Step 4's hand-over to the writer; `on_done` gets the step 5 answer."""
        client_id, key = prepared.client_id, prepared.key

        def recorded(result: WriteResult) -> None:
            # The claim ends with the write, not with the call: a caller that gave up and
            # retries at once gets ABORTED until the first attempt's outcome is stored.
            self._in_flight.release(client_id, key)
            answer = _answer(client_id, prepared.record, prepared.response, result, self.metrics)
            self.metrics.answered(prepared.method, answer, prepared.started)
            on_done(answer)

        try:
            self._writer.submit(prepared.record, recorded)
        except BaseException:
            self._in_flight.release(client_id, key)
            raise

    def _reject_unidentified(self, method: str, started: float) -> None:
        self.metrics.rejected["client_id_missing"].inc()
        self.metrics.answered(method, MISSING_CLIENT_ID, started)


class _Prepared:
    """A valid request, tokenized, claimed and turned into its record: ready for the writer."""

    __slots__ = ("client_id", "key", "method", "record", "response", "started")

    def __init__(
        self,
        client_id: str,
        key: str,
        record: NewTransaction,
        response: CreateTransactionResponse,
        method: str,
        started: float,
    ) -> None:
        self.client_id = client_id
        self.key = key
        self.record = record
        self.response = response
        self.method = method
        self.started = started


def _bind_index(
    on_done: Callable[[int, CreateResult], None], index: int
) -> Callable[[CreateResult], None]:
    return lambda result: on_done(index, result)


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


class _StreamRefused(Exception):
    """A message the stream cannot take: the call ends with `status` once every message read
    before it is answered."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


class _StreamFailed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Window:
    """Items of one stream in flight or answered-but-unsent; admits messages in arrival order.

    One reader acquires, so at most one waits. A message counts at most the whole window: one
    larger than the window is admitted once everything before it has been sent back.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("the stream window must be at least 1")
        self.size = size
        self._free = size
        self._waiter: tuple[int, asyncio.Future[None]] | None = None

    async def acquire(self, weight: int) -> None:
        if self._waiter is None and weight <= self._free:
            self._free -= weight
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter = (weight, future)
        await future

    def release(self, weight: int) -> None:
        self._free += weight
        if self._waiter is not None and self._waiter[0] <= self._free:
            wanted, future = self._waiter
            self._waiter = None
            if not future.done():
                self._free -= wanted
                future.set_result(None)


RequestT = TypeVar("RequestT", SubmitTransactionsRequest, SubmitTransactionBatch)
AnswerT = TypeVar("AnswerT", SubmitTransactionsResponse, SubmitTransactionBatchResult)


class _AnsweringStream(Generic[RequestT, AnswerT]):
    """One streaming call: a reader task admits messages, the handler yields their answers.

    At most `window` items are in flight or answered-but-unsent: a message's items free their
    slots when its answer is handed to gRPC, so a client that stops reading stops being read.
    """

    def __init__(self, service: TransactionService, client_id: str, window: int) -> None:
        self._service = service
        self._client_id = client_id
        self._window = _Window(window)
        # An answer with the window slots it frees; None marks the end: the input is exhausted
        # and every message has been answered. A failure ends it too: a refused message's comes
        # after the answers of the messages read before it.
        self._answers: asyncio.Queue[tuple[AnswerT, int] | _StreamFailed | None] = asyncio.Queue()
        self._outstanding = 0
        self._input_done = False
        self._refused: _StreamRefused | None = None

    async def run(self, requests: AsyncIterable[RequestT]) -> AsyncIterator[AnswerT]:
        reader = asyncio.create_task(self._read(requests))
        try:
            while (entry := await self._answers.get()) is not None:
                if isinstance(entry, _StreamFailed):
                    raise entry.error
                answer, weight = entry
                self._window.release(weight)
                yield answer
        finally:
            # Cancelled or failed call: stop reading. Writes already submitted still complete.
            reader.cancel()

    async def _read(self, requests: AsyncIterable[RequestT]) -> None:
        try:
            async for message in requests:
                weight = min(self._items(message), self._window.size)
                await self._window.acquire(weight)
                self._outstanding += 1
                try:
                    self._admit(message, weight)
                except BaseException:
                    self._outstanding -= 1
                    raise
        except _StreamRefused as refused:
            # Reading stops; the messages read before are answered first.
            self._refused = refused
            if self._outstanding == 0:
                self._answers.put_nowait(_StreamFailed(refused))
            return
        except Exception as exc:
            self._answers.put_nowait(_StreamFailed(exc))
            return
        self._input_done = True
        if self._outstanding == 0:
            self._answers.put_nowait(None)

    def _answered(self, answer: AnswerT, weight: int) -> None:
        self._outstanding -= 1
        self._answers.put_nowait((answer, weight))
        if self._outstanding == 0:
            if self._refused is not None:
                self._answers.put_nowait(_StreamFailed(self._refused))
            elif self._input_done:
                self._answers.put_nowait(None)

    def _items(self, message: RequestT) -> int:
        raise NotImplementedError

    def _admit(self, message: RequestT, weight: int) -> None:
        """Start handling `message`; `_answered` is called once, when all of it is answered."""
        raise NotImplementedError


class _SubmitStream(_AnsweringStream[SubmitTransactionsRequest, SubmitTransactionsResponse]):
    """One SubmitTransactions call: every item is answered on its own, in completion order."""

    def _items(self, message: SubmitTransactionsRequest) -> int:
        return 1

    def _admit(self, message: SubmitTransactionsRequest, weight: int) -> None:
        request_id = message.request_id

        def answered(result: CreateResult) -> None:
            self._answered(_stream_answer(request_id, result), weight)

        rejection = self._service.start_create(
            self._client_id, message.transaction, answered, method=SUBMIT_METHOD
        )
        if rejection is not None:
            answered(rejection)


class _BatchStream(_AnsweringStream[SubmitTransactionBatch, SubmitTransactionBatchResult]):
    """One SubmitTransactionBatches call: a batch is answered once all its items are."""

    def _items(self, message: SubmitTransactionBatch) -> int:
        return len(message.items)

    def _admit(self, message: SubmitTransactionBatch, weight: int) -> None:
        too_large = batch_too_large(message, self._client_id)
        if too_large is not None:
            self._service.metrics.rejected["batch_too_large"].inc(len(message.items))
            raise _StreamRefused(
                _status(
                    code_pb2.INVALID_ARGUMENT,
                    f"{too_large}; nothing of it was stored: send its items in smaller batches, "
                    "with the same idempotency keys",
                    _error_info("BATCH_TOO_LARGE"),
                )
            )
        items = message.items
        result = SubmitTransactionBatchResult()
        answers = result.items
        for item in items:
            answers.add(request_id=item.request_id)
        unanswered = len(items)
        if unanswered == 0:
            self._answered(result, weight)
            return

        def answered(index: int, outcome: CreateResult) -> None:
            nonlocal unanswered
            _fill_answer(answers[index], outcome)
            unanswered -= 1
            if unanswered == 0:
                self._answered(result, weight)

        self._service.start_creates(
            self._client_id, [item.transaction for item in items], answered, method=BATCH_METHOD
        )


def _fill_answer(answer: SubmitTransactionsResponse, result: CreateResult) -> None:
    if isinstance(result, status_pb2.Status):
        answer.error.CopyFrom(result)
    else:
        answer.created.CopyFrom(result)


def _stream_answer(request_id: str, result: CreateResult) -> SubmitTransactionsResponse:
    if isinstance(result, status_pb2.Status):
        return SubmitTransactionsResponse(request_id=request_id, error=result)
    return SubmitTransactionsResponse(request_id=request_id, created=result)
