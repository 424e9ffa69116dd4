"""A copy of the pre-filled input that no detector can read until it is released.

The scaling runs start several detectors in one group. Each takes seconds to start, load the
terminal table and be assigned; on the pre-filled topic itself, the first one assigned would
decide alone meanwhile, and the partitions it kept would have little left once the others joined.
So each run reads a copy in a namespace of its own: the terminal table copied as it is, the
transactions inside one open Kafka transaction. Detectors read committed records only
(`isolation.level=read_committed`): they join, get their partitions and find nothing to read
until `release()` commits the transaction, and then every record is readable at once.
"""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from txguard.bench.kafka_io import BenchKafkaError, copy_topic
from txguard.config import Settings
from txguard.kafka.clients import make_producer
from txguard.kafka.consumer_loop import close_producer
from txguard.kafka.topics import ensure_topics

# The copy stays unreadable this long at most: starting detectors takes seconds, not minutes.
TRANSACTION_TIMEOUT_MS = 600_000
TRANSACTION_CALL_SECONDS = 60.0


class GatedInput:
    """`fill()` copies the source's input into `target`'s namespace, the transactions held back;
    `release()` makes them readable. Leaving the block without releasing aborts the copy."""

    def __init__(self, bootstrap: str, source: Settings, target: Settings) -> None:
        self.bootstrap = bootstrap
        self.source = source
        self.target = target
        # Set while a transaction is open: the one `release()` commits or leaving aborts.
        self._producer: Producer | None = None

    def fill(self) -> int:
        """Copy the terminal table (readable at once) and the transactions topic (held back);
        returns how many records of the transactions topic were copied."""
        ensure_topics(self.bootstrap, self.target)
        failed: list[KafkaError] = []

        def report(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failed.append(error)

        table = make_producer(self.bootstrap, client_id="txguard-bench-copy", on_delivery=report)
        try:
            copy_topic(
                self.bootstrap,
                self.source.topics.terminal_risk,
                table,
                self.target.topics.terminal_risk,
            )
        finally:
            dropped = close_producer(table, timeout=TRANSACTION_CALL_SECONDS)
        if dropped or failed:
            # A detector on a partial table would not compute the features of the others.
            first = f" (first error: {failed[0]})" if failed else ""
            raise BenchKafkaError(
                f"{dropped + len(failed)} terminal-table records were not copied{first}"
            )
        transactional: dict[str, Any] = {
            "transactional.id": f"txguard-bench-gate-{uuid.uuid4().hex}",
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
        }
        producer = make_producer(self.bootstrap, client_id="txguard-bench-gate", **transactional)
        try:
            producer.init_transactions(TRANSACTION_CALL_SECONDS)
            producer.begin_transaction()
        except BaseException:
            close_producer(producer, timeout=0)
            raise
        self._producer = producer
        copied = copy_topic(
            self.bootstrap,
            self.source.topics.transactions,
            producer,
            self.target.topics.transactions,
        )
        # Written to the log, still unreadable to read_committed consumers.
        producer.flush(TRANSACTION_CALL_SECONDS)
        return copied

    def release(self) -> None:
        """Commit the copied transactions: every record becomes readable at once."""
        if self._producer is None:
            raise RuntimeError("nothing to release: fill() first")
        self._producer.commit_transaction(TRANSACTION_CALL_SECONDS)
        self._close()

    def __enter__(self) -> GatedInput:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if self._producer is not None:
            self._producer.abort_transaction(TRANSACTION_CALL_SECONDS)
            self._close()

    def _close(self) -> None:
        if self._producer is not None:
            close_producer(self._producer, timeout=TRANSACTION_CALL_SECONDS)
            self._producer = None
