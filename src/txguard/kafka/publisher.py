"""Publishing with proof of delivery, for loops that commit offsets only after their output is safe.

`send()` queues records at once (they leave after librdkafka's linger); `confirm()` waits until
every record sent since the last confirmation is acknowledged. A failed delivery is answered by
sending all of them again with a fresh producer, in order: duplicates are absorbed downstream,
nothing is skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Producer

from txguard.kafka.clients import make_producer, partitions_of
from txguard.kafka.consumer_loop import (
    Backoff,
    DeliveryTimeout,
    FailedDeliveries,
    OutgoingRecord,
    close_producer,
    produce_all,
    wait_for_deliveries,
)

log = logging.getLogger(__name__)


class PublishTimeout(RuntimeError):
    """Stopping, and records were not acknowledged in time: offsets must stay uncommitted."""


class PublishError(RuntimeError):
    """A record was rejected while stopping; its batch will be reprocessed by the next owner."""


class ConfirmedPublisher:
    """One idempotent producer plus the records it has not yet confirmed."""

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str,
        on_retry: Callable[[], None],
        stop_grace_seconds: float = 10.0,
        **overrides: Any,
    ) -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._on_retry = on_retry
        self._stop_grace_seconds = stop_grace_seconds
        # No message timeout: during a broker outage librdkafka keeps retrying in order and the
        # loop simply waits; a timeout would only turn the outage into resends.
        self._overrides: dict[str, Any] = {
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": 0,
            # Only failures call back into Python: success is proven by the flush in confirm(),
            # and a callback per acknowledged record costs more than producing it.
            "delivery.report.only.error": True,
            **overrides,
        }
        self._producer: Producer | None = None
        self._pending: list[OutgoingRecord] = []
        self._failures = FailedDeliveries()

    @property
    def pending(self) -> int:
        """Records sent since the last confirmation."""
        return len(self._pending)

    def send(self, records: Sequence[OutgoingRecord]) -> None:
        producer = self._current()
        produce_all(producer, records, on_retry=self._on_retry)
        self._pending.extend(records)
        producer.poll(0)

    def confirm(self, stop: threading.Event, *, what: str) -> None:
        """Wait until everything sent is acknowledged; resend all of it after a failure."""
        backoff = Backoff()
        while self._pending:
            try:
                wait_for_deliveries(
                    self._current(),
                    stop=stop,
                    stop_grace_seconds=self._stop_grace_seconds,
                    what=what,
                )
            except DeliveryTimeout as exc:
                raise PublishTimeout(f"{what}: {exc}; offsets not committed") from exc
            failures = self._failures
            if not failures.errors:
                self._pending.clear()
                return
            self._on_retry()
            log.warning(
                "%s: %d of %d deliveries failed (first: %s); resending with a new producer",
                what,
                len(failures.errors),
                len(self._pending),
                failures.errors[0],
            )
            if stop.is_set():
                raise PublishError(f"{what}: delivery failed while stopping: {failures.errors[0]}")
            self._discard_producer()
            backoff.sleep(stop)
            records, self._pending = self._pending, []
            self.send(records)

    def try_confirm(self) -> bool:
        """`confirm()` without waiting: True if everything sent is acknowledged by now.

        False while records are in flight or when a delivery failed (`confirm()` resends then).
        """
        if not self._pending:
            return True
        producer = self._current()
        producer.poll(0)
        if len(producer) or self._failures.errors:
            return False
        self._pending.clear()
        return True

    def publish(
        self, records: Sequence[OutgoingRecord], stop: threading.Event, *, what: str
    ) -> None:
        self.send(records)
        self.confirm(stop, what=what)

    def partition_count(self, topic: str, *, timeout: float = 10.0) -> int:
        """The topic's partition count as this publisher's producer knows it, asked of the
        cluster now: the producer refuses a record for a partition it does not know yet, and
        learns of added partitions by itself only at its next metadata refresh. Raises
        KafkaException when the cluster does not answer."""
        return len(partitions_of(self._current(), topic, timeout=timeout))

    def close(self) -> None:
        if self._producer is not None:
            close_producer(self._producer, timeout=self._stop_grace_seconds)
            self._producer = None

    def _current(self) -> Producer:
        if self._producer is None:
            # The producer's own delivery callback: no callback object travels with each record.
            self._failures = FailedDeliveries()
            self._producer = make_producer(
                self._bootstrap,
                client_id=self._client_id,
                on_delivery=self._failures,
                **self._overrides,
            )
        return self._producer

    def _discard_producer(self) -> None:
        if self._producer is not None:
            close_producer(self._producer, timeout=0)
            self._producer = None
