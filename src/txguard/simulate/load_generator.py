"""A load generator that sends realistic transactions through the gRPC API at a fixed rate:
one CreateTransaction call per transaction, or batches of them over SubmitTransactionBatches."""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final, Protocol

import grpc

from txguard.schema.v1.service_pb2 import (
    CreateTransactionRequest,
    SubmitTransactionBatch,
    SubmitTransactionBatchResult,
)
from txguard.schema.v1.service_pb2_grpc import TransactionServiceStub
from txguard.schema.v1.transaction_pb2 import Channel
from txguard.simulate.cards import synthetic_card_number
from txguard.transactions.batch_limits import MAX_BATCH_ITEMS
from txguard.transactions.client import TransactionClient

_COUNTRIES = ("DE", "FR", "NL", "BE", "ES", "IT", "GB", "US")
_CURRENCY_BY_COUNTRY = {"GB": "GBP", "US": "USD"}
# Codes worth retrying with the same idempotency key: the request may not have been handled.
_RETRYABLE = {
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Batched load: at most this long between two batch messages, so a batch holds what fell due
# meanwhile: few items at a low rate (latency), more as the rate grows (CPU per transaction).
DEFAULT_BATCH_INTERVAL_SECONDS: Final = 0.002


@dataclass(frozen=True)
class SyntheticAccount:
    account_id: str
    card_number: str
    country: str
    currency: str
    typical_amount_minor: int
    terminals: tuple[str, ...]
    device_id: str


class TransactionFactory:
    """A stream of realistic requests: mostly ordinary spending, some fraud-like bursts.

    The seed fixes the stream's shape (amounts, bursts, terminals); account ids and idempotency
    keys are new in every run, so runs against the same store never collide.

    A small share of accounts is 'compromised': they make sudden large purchases or rapid
    sequences, so the demo shows every outcome, not only approvals.
    """

    def __init__(self, *, accounts: int, seed: int) -> None:
        self._rng = random.Random(seed)
        # Fresh accounts each run: a second demo must not inherit the first one's velocity.
        self._run = uuid.uuid4().hex[:8]
        self.accounts = [self._make_account(index) for index in range(accounts)]
        self._burst: list[SyntheticAccount] = []

    def _make_account(self, index: int) -> SyntheticAccount:
        rng = self._rng
        country = rng.choice(_COUNTRIES)
        return SyntheticAccount(
            account_id=f"acct-{self._run}-{index:06d}",
            card_number=synthetic_card_number(rng),
            country=country,
            currency=_CURRENCY_BY_COUNTRY.get(country, "EUR"),
            typical_amount_minor=int(rng.uniform(500, 10_000)),
            terminals=tuple(f"term-{rng.randrange(5_000):05d}" for _ in range(3)),
            device_id=f"dev-{rng.getrandbits(128):032x}",
        )

    def next_request(self) -> CreateTransactionRequest:
        rng = self._rng
        if self._burst:
            account = self._burst.pop()
            amount = account.typical_amount_minor * rng.randint(3, 8)
        else:
            account = rng.choice(self.accounts)
            roll = rng.random()
            if roll < 0.004:
                # A velocity burst: the same card used many times in quick succession.
                self._burst = [account] * rng.randint(10, 14)
            amount = max(1, int(rng.lognormvariate(math.log(account.typical_amount_minor), 0.6)))
            if roll > 0.995:
                amount = rng.randint(500_000, 2_000_000)
        return CreateTransactionRequest(
            # Not from the seeded stream: a second run with the same seed must not replay the
            # first run's requests (the API would answer them from its idempotency records).
            idempotency_key=uuid.uuid4().hex,
            account_id=account.account_id,
            amount_minor=amount,
            currency=account.currency,
            terminal_id=rng.choice(account.terminals),
            card_number=account.card_number,
            merchant_id=f"merchant-{rng.randrange(2_000):04d}",
            channel=rng.choice((Channel.CHANNEL_CARD_PRESENT, Channel.CHANNEL_ECOMMERCE)),
            country=account.country,
            device_id=account.device_id,
        )


class RequestSource(Protocol):
    """Where a load generator takes its next request from."""

    def next_request(self) -> CreateTransactionRequest: ...


class PreparedRequests:
    """`count` requests of a factory made before a load starts, handed out in order (then made
    one by one as needed): making them then takes none of the load generator's CPU while the
    load runs, on a machine it may share with the pipeline under load."""

    def __init__(self, factory: RequestSource, count: int) -> None:
        self._factory = factory
        self._requests = deque(factory.next_request() for _ in range(count))

    def __len__(self) -> int:
        return len(self._requests)

    def next_request(self) -> CreateTransactionRequest:
        if self._requests:
            return self._requests.popleft()
        return self._factory.next_request()


@dataclass
class LoadStats:
    sent: int = 0
    accepted: int = 0
    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    accepted_ids: list[str] = field(default_factory=list)
    api_latencies_ms: list[float] = field(default_factory=list)
    # Batch messages sent (batched load only).
    batches: int = 0


async def paced(
    rate_per_second: float, duration_seconds: float, stop: asyncio.Event | None = None
) -> AsyncIterator[int]:
    """0, 1, 2, ...: request n when it falls due (n / rate after the start), until
    `duration_seconds` have passed or `stop` is set. A consumer that falls behind gets the due
    requests back to back."""
    interval = 1.0 / rate_per_second
    start = time.monotonic()
    deadline = start + duration_seconds
    index = 0
    while stop is None or not stop.is_set():
        now = time.monotonic()
        if now >= deadline:
            return
        due = start + index * interval
        if due > now:
            await asyncio.sleep(due - now)
            continue
        yield index
        index += 1


async def generate_load(
    target: str,
    factory: RequestSource,
    *,
    rate_per_second: float,
    duration_seconds: float,
    stop: asyncio.Event,
    stats: LoadStats,
    client_id: str = "txguard-demo",
    max_in_flight: int = 256,
) -> None:
    """Send requests at `rate_per_second` until `duration_seconds` pass or `stop` is set."""
    metadata = (("x-client-id", client_id),)
    slots = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = TransactionServiceStub(channel)

        async def send(request: CreateTransactionRequest) -> None:
            try:
                for attempt in range(8):
                    started = time.perf_counter()
                    try:
                        response = await stub.CreateTransaction(
                            request, metadata=metadata, timeout=10
                        )
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() in _RETRYABLE and attempt < 7:
                            stats.retries += 1
                            await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
                            continue
                        stats.errors[exc.code().name] += 1
                        return
                    stats.api_latencies_ms.append((time.perf_counter() - started) * 1000)
                    stats.accepted += 1
                    stats.accepted_ids.append(response.transaction.transaction_id)
                    return
            finally:
                slots.release()

        async for index in paced(rate_per_second, duration_seconds, stop):
            await slots.acquire()
            task = asyncio.create_task(send(factory.next_request()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            stats.sent = index + 1
        if tasks:
            await asyncio.gather(*tasks)


async def generate_batched_load(
    target: str,
    factory: RequestSource,
    *,
    rate_per_second: float,
    duration_seconds: float,
    stop: asyncio.Event,
    stats: LoadStats,
    client_id: str = "txguard-demo",
    max_in_flight: int = 1024,
    batch_interval_seconds: float = DEFAULT_BATCH_INTERVAL_SECONDS,
) -> None:
    """Send requests at `rate_per_second` over one SubmitTransactionBatches stream.

    Every `batch_interval_seconds` (or when the next request falls due, if that is later), the
    requests due by then leave as one batch message. An item's API latency counts from when it
    was due, so it includes its wait for the batch. Failed items are counted by code, not retried.
    At most `max_in_flight` items are unanswered; when that many are, due requests wait and
    leave together in the next batch.
    """
    interval = 1.0 / rate_per_second
    due_at: dict[str, float] = {}
    in_flight = 0
    answered = asyncio.Event()
    async with grpc.aio.insecure_channel(target) as channel:
        call = TransactionClient(channel, client_id).submit_batches()

        async def read_results() -> None:
            nonlocal in_flight
            async for result in call:
                assert isinstance(result, SubmitTransactionBatchResult)
                now = time.perf_counter()
                for answer in result.items:
                    due = due_at.pop(answer.request_id, None)
                    if due is not None:
                        stats.api_latencies_ms.append((now - due) * 1000)
                    if answer.HasField("created"):
                        stats.accepted += 1
                        stats.accepted_ids.append(answer.created.transaction.transaction_id)
                    else:
                        stats.errors[f"code-{answer.error.code}"] += 1
                in_flight -= len(result.items)
                answered.set()

        reader = asyncio.create_task(read_results())
        start = time.perf_counter()
        deadline = start + duration_seconds
        sent = 0
        try:
            while not stop.is_set():
                now = time.perf_counter()
                if now >= deadline or reader.done():
                    break
                # Requests k with start + k * interval <= now are due.
                due_count = int((now - start) * rate_per_second) + 1 - sent
                take = min(due_count, max_in_flight - in_flight, MAX_BATCH_ITEMS)
                if take <= 0 and due_count > 0:
                    answered.clear()
                    await answered.wait()
                    continue
                if take > 0:
                    batch = SubmitTransactionBatch()
                    for index in range(sent, sent + take):
                        request_id = str(index)
                        batch.items.add(request_id=request_id, transaction=factory.next_request())
                        due_at[request_id] = start + index * interval
                    in_flight += take
                    sent += take
                    stats.sent = sent
                    stats.batches += 1
                    await call.write(batch)
                wake = max(now + batch_interval_seconds, start + sent * interval)
                await asyncio.sleep(max(0.0, wake - time.perf_counter()))
            await call.done_writing()
            await reader
        finally:
            if not reader.done():  # left early (cancelled, or a write failed)
                call.cancel()
                reader.cancel()
