"""What is written for an accepted transaction, and the group-commit writer that writes it.

One writer thread owns one store connection and drains a queue of pending records: it takes
whatever is queued (up to `max_batch`, never waiting for more), records the batch in one database
transaction, and hands each result back to the event loop. While one commit is in progress the
next batch accumulates, so the batch size follows the load and an idle server commits at once.
Reads go through `TransactionReader`, a second connection on its own thread.

The writer also marks outbox events published for a relay in the same process: the relay hands
what Kafka acknowledged to the store's `PublishedHandoff`, and the writer's next batch transaction
marks it (a batch of marks only, when no transaction is queued). So one connection of the process
writes, and the relay never takes the write lock from under it.

With `checkpoint_seconds`, a third connection on a thread of its own checkpoints the store's
write-ahead log at that interval, so that commits do not (SQLite's auto-checkpoint runs inside
the COMMIT that crosses its threshold, stalling every request of that batch).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeAlias

from txguard.clock import set_timestamp_us
from txguard.kafka.serde import encode_transaction_created_from
from txguard.observability import metrics
from txguard.schema.ids import new_transaction_and_event_ids
from txguard.schema.v1.service_pb2 import CreateTransactionRequest, CreateTransactionResponse
from txguard.schema.v1.transaction_pb2 import Transaction, TransactionStatus
from txguard.store.interface import (
    IdempotencyKeyReused,
    NewTransaction,
    OutboxEvent,
    PublishedEvents,
    PublishedHandoff,
    RecordOutcome,
    TransactionStore,
)
from txguard.transactions.card import CardToken

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH: Final = 256
# Between background checkpoints of the write-ahead log.
DEFAULT_CHECKPOINT_SECONDS: Final = 0.5


class StoreWriteFailed(Exception):
    """The batch holding this record could not be written; nothing of it was stored."""


class WriterClosed(RuntimeError):
    """A record was submitted after `TransactionWriter.close()`."""


# Per record: stored (or replayed), key reused with another payload, or the write failed.
WriteResult: TypeAlias = RecordOutcome | IdempotencyKeyReused | StoreWriteFailed
OnRecorded: TypeAlias = Callable[[WriteResult], None]
StoreFactory: TypeAlias = Callable[[], TransactionStore]


_PENDING: Final = TransactionStatus.TRANSACTION_STATUS_PENDING


def accepted_transaction(
    *,
    client_id: str,
    request: CreateTransactionRequest,
    card: CardToken,
    fingerprint: bytes,
    now_us: int,
    topic: str,
) -> tuple[NewTransaction, CreateTransactionResponse]:
    """The record to store for a valid request, and the response it will be answered with.

    `request.card_number` is never read here: the card enters only as its token.
    """
    transaction_id, event_id = new_transaction_and_event_ids(now_us)
    response = CreateTransactionResponse()
    tx = response.transaction
    tx.transaction_id = transaction_id
    tx.client_id = client_id
    tx.idempotency_key = request.idempotency_key
    tx.account_id = request.account_id
    tx.amount_minor = request.amount_minor
    tx.currency = request.currency
    tx.terminal_id = request.terminal_id
    tx.merchant_id = request.merchant_id
    tx.card_token = card.token
    tx.card_bin = card.bin
    tx.card_last4 = card.last4
    tx.channel = request.channel
    tx.country = request.country
    tx.device_id = request.device_id
    set_timestamp_us(tx.accepted_at, now_us)
    tx.occurred_at.CopyFrom(
        request.occurred_at if request.HasField("occurred_at") else tx.accepted_at
    )
    tx.status = _PENDING
    # The event is written around these bytes instead of serializing a TransactionCreated copy.
    serialized = tx.SerializeToString()
    encoded = encode_transaction_created_from(event_id, tx.account_id, serialized)
    record = NewTransaction(
        client_id=client_id,
        idempotency_key=request.idempotency_key,
        request_fingerprint=fingerprint,
        transaction=tx,
        outbox_event=OutboxEvent(
            event_id=event_id,
            topic=topic,
            key=encoded.key,
            payload=encoded.value,
            headers=encoded.headers,
        ),
    )
    return record, response


_Pending: TypeAlias = tuple[NewTransaction, OnRecorded]


class _Wake:
    """Queued by the published-events handoff: marks are waiting, write a batch."""


_WAKE: Final = _Wake()


class TransactionWriter:
    """Group commit of `NewTransaction`s through one store connection on one thread.

    `submit` is called on the event loop; each callback runs later on that same loop, exactly once
    per record, with the record's `WriteResult`. `close` writes whatever is still queued first.
    """

    def __init__(
        self,
        open_store: StoreFactory,
        loop: asyncio.AbstractEventLoop,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        checkpoint_seconds: float | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._open_store = open_store
        self._loop = loop
        self._max_batch = max_batch
        self._checkpoint_seconds = checkpoint_seconds
        self._checkpoint_stop = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="txguard-wal-checkpoint", daemon=True
        )
        # None is the stop marker, queued by close() behind everything submitted before it.
        self._queue: queue.SimpleQueue[_Pending | _Wake | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name="txguard-transaction-writer", daemon=True
        )
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closed = False
        # Written by the writer thread only; read for statistics.
        self.batches_written = 0
        self.records_written = 0
        # Read at scrape time: costs nothing per request. Weak, so a closed writer can go.
        writer = weakref.ref(self)
        metrics.STORE_WRITE_QUEUE.set_function(
            lambda: float(w._queue.qsize()) if (w := writer()) is not None else 0.0
        )

    def start(self) -> None:
        """Open the store on the writer thread; raises what opening it raised."""
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._closed = True
            raise self._startup_error
        if self._checkpoint_seconds is not None:
            self._checkpointer.start()

    def submit(self, record: NewTransaction, on_recorded: OnRecorded) -> None:
        if self._closed:
            raise WriterClosed("the transaction writer is closed")
        self._queue.put((record, on_recorded))

    async def record(self, record: NewTransaction) -> WriteResult:
        """Submit one record and wait for its result."""
        future: asyncio.Future[WriteResult] = self._loop.create_future()

        def resolve(result: WriteResult) -> None:
            if not future.done():
                future.set_result(result)

        self.submit(record, resolve)
        return await future

    def close(self) -> None:
        """Write everything submitted so far, close the store and stop the thread (blocking)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self._checkpoint_stop.set()
        if self._checkpointer.is_alive():
            self._checkpointer.join()

    def _run(self) -> None:
        try:
            store = self._open_store()
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        handoff = store.published_handoff()
        attached = handoff.attach(self._wake)
        self._ready.set()
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                if first is None:
                    break
                batch: list[_Pending] = [] if isinstance(first, _Wake) else [first]
                while len(batch) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    if not isinstance(item, _Wake):
                        batch.append(item)
                self._write(store, batch, handoff if attached else None)
        finally:
            if attached:
                self._mark_left_over(store, handoff)
            store.close()

    def _wake(self) -> None:
        self._queue.put(_WAKE)

    @staticmethod
    def _mark_left_over(store: TransactionStore, handoff: PublishedHandoff) -> None:
        """After the last batch: stop taking the relay's events and mark what it left."""
        for events in handoff.detach():
            try:
                store.mark_published(events.seqs, events.published_at_us)
            except Exception as exc:
                # Acknowledged, so only published again after a restart: consumers dedupe.
                log.warning("marking %d published outbox events failed: %s", len(events.seqs), exc)

    def _checkpoint_loop(self) -> None:
        interval = self._checkpoint_seconds
        assert interval is not None
        store: TransactionStore | None = None
        failing = False
        try:
            while not self._checkpoint_stop.wait(interval):
                try:
                    store = store or self._open_store()
                    store.checkpoint()
                    failing = False
                except Exception as exc:
                    # The writer's own connection still checkpoints (at a higher threshold):
                    # report once, keep trying.
                    if not failing:
                        log.warning("background checkpoint failed: %s", exc)
                        failing = True
        finally:
            if store is not None:
                store.close()

    def _write(
        self,
        store: TransactionStore,
        batch: Sequence[_Pending],
        handoff: PublishedHandoff | None,
    ) -> None:
        published: list[PublishedEvents] = handoff.take() if handoff is not None else []
        if not batch and not published:
            return
        results: Sequence[WriteResult]
        started = time.perf_counter()
        try:
            results = store.record_transactions([record for record, _ in batch], published)
        except Exception:
            log.exception("storing a batch of %d transactions failed", len(batch))
            failure = StoreWriteFailed("the transaction could not be stored")
            results = [failure] * len(batch)
            metrics.STORE_COMMIT_FAILURES.inc()
            if handoff is not None:
                # Marked with the next batch (and until then read past by the relay).
                handoff.give_back(published)
        else:
            if batch:
                self.batches_written += 1
                self.records_written += len(batch)
                metrics.STORE_COMMIT_BATCH_RECORDS.observe(len(batch))
            metrics.STORE_COMMIT_DURATION.observe(time.perf_counter() - started)
        if not batch:
            return
        callbacks = [callback for _, callback in batch]
        try:
            self._loop.call_soon_threadsafe(_deliver, callbacks, results)
        except RuntimeError:
            # The loop is gone: nobody is waiting any more; what was stored stays stored.
            log.warning("event loop closed; %d write results dropped", len(batch))


def _deliver(callbacks: Sequence[OnRecorded], results: Sequence[WriteResult]) -> None:
    for callback, result in zip(callbacks, results, strict=True):
        try:
            callback(result)
        except Exception:
            log.exception("handling a write result failed")


class TransactionReader:
    """Point reads on a second store connection, on its own thread, off the event loop."""

    def __init__(self, open_store: StoreFactory) -> None:
        self._open_store = open_store
        self._store: TransactionStore | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="txguard-reader")

    async def get_transaction(self, transaction_id: str) -> Transaction | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._get, transaction_id)

    def close(self) -> None:
        """Close the connection on its own thread and stop the thread (blocking)."""
        self._executor.submit(self._close_store).result()
        self._executor.shutdown(wait=True)

    def _get(self, transaction_id: str) -> Transaction | None:
        if self._store is None:
            self._store = self._open_store()
        return self._store.get_transaction(transaction_id)

    def _close_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
