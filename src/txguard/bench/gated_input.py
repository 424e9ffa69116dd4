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

from confluent_kafka import Producer

from txguard.bench.kafka_io import copy_topic
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
        self.transactions = 0
        self._producer: Producer | None = None

    def fill(self) -> int:
        """Copy the terminal table (readable at once) and the transactions (held back)."""
        ensure_topics(self.bootstrap, self.target)
        table = make_producer(self.bootstrap, client_id="txguard-bench-copy")
        try:
            copy_topic(
                self.bootstrap,
                self.source.topics.terminal_risk,
                table,
                self.target.topics.terminal_risk,
            )
            table.flush(TRANSACTION_CALL_SECONDS)
        finally:
            close_producer(table, timeout=TRANSACTION_CALL_SECONDS)
        transactional: dict[str, Any] = {
            "transactional.id": f"txguard-bench-gate-{uuid.uuid4().hex}",
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
        }
        producer = make_producer(self.bootstrap, client_id="txguard-bench-gate", **transactional)
        self._producer = producer
        producer.init_transactions(TRANSACTION_CALL_SECONDS)
        producer.begin_transaction()
        self.transactions = copy_topic(
            self.bootstrap,
            self.source.topics.transactions,
            producer,
            self.target.topics.transactions,
        )
        # Written to the log, still unreadable to read_committed consumers.
        producer.flush(TRANSACTION_CALL_SECONDS)
        return self.transactions

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
