"""`txguard simulate --stream`: the handbook simulation sent live into the gRPC API.

Clock semantics. The transactions keep their simulated event times (occurred_at = TX_DATETIME)
and are sent in event-time order. Wall-clock pacing is `rate_per_second`: transaction k leaves at
the later of its rate slot (one interval after the previous slot; a stream that fell behind
catches up, so the average holds) and, with `speedup`, its event-time slot (start + event time
elapsed / speedup). The stream's event time is cut into slices (an hour by default); once every
transaction of a slice has been sent, in this order:

1. the labels known by the slice's end (frauds with occurred_at + label delay before it) are
   published to the labels topic in known_at order, each naming the transaction id the API
   returned; a label waits for its transaction's answer, and a transaction the API did not
   accept gets no label;
2. a StreamWatermark (complete_until = the slice's last microsecond) goes to every partition of
   the labels topic: no label known at or before it will follow, which lets the terminal-risk
   aggregator tell "no fraud" from "not known yet".

After the last transaction the slices go on (paced by `speedup` when it is set) until the last
label is out. Every request carries an idempotency key derived from the simulation's parameters
and its TRANSACTION_ID, so a restarted stream re-sends the same keys and the API stores nothing
twice. On stop (SIGINT, SIGTERM, the stop event or the duration) nothing new is sent, requests
in flight get a grace period to be answered, the labels already produced are flushed, and a
summary is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal

import grpc
import numpy as np
import numpy.typing as npt
import pandas as pd
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from txguard.clock import now_us, set_timestamp_us
from txguard.config import Settings
from txguard.kafka.clients import KafkaNotRunning, make_producer, resolve_bootstrap
from txguard.kafka.consumer_loop import OutgoingRecord, produce_with_backpressure
from txguard.kafka.topics import TopicError, ensure_topics, existing_partition_counts
from txguard.replay.events import DAY_US, account_id, label_record, terminal_id, watermark_records
from txguard.schema.v1.service_pb2 import CreateTransactionRequest
from txguard.simulate.cards import synthetic_card_number
from txguard.simulate.dataset import amount_minor
from txguard.simulate.handbook import SimulationConfig, simulate
from txguard.transactions.client import TransactionClient
from txguard.transactions.validation import EARLIEST_OCCURRED_AT_SECONDS, MAX_FUTURE_SKEW_US

SIMULATOR_SOURCE: Final = "simulator"
CLIENT_ID: Final = "txguard-simulator"
CURRENCY: Final = "EUR"
# The answers after which the same request may be sent again with its key (docs/api.md, Errors).
RETRYABLE_CODES: Final = frozenset(
    {
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)
_ATTEMPTS: Final = 10
_REQUEST_TIMEOUT_SECONDS: Final = 10.0
_CONNECT_TIMEOUT_SECONDS: Final = 10.0
# Once stopping, requests already sent get this long to be answered before they are abandoned.
_STOP_GRACE_SECONDS: Final = 10.0
_FLUSH_TIMEOUT_SECONDS: Final = 30.0
_PROGRESS_EVERY_SECONDS: Final = 10.0
# Long waits are cut into steps so a stop is noticed promptly.
_WAIT_STEP_SECONDS: Final = 0.1

StopReason = Literal["completed", "interrupted", "duration"]
DeliveryCallback = Callable[[KafkaError | None, Message], None]


class StreamError(RuntimeError):
    """The stream cannot start; the message says what to do."""

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _number(value: object) -> float | None:
    """`value` if it is a finite int or float (not a bool), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _positive(value: object) -> bool:
    number = _number(value)
    return number is not None and number > 0


@dataclass(frozen=True, kw_only=True)
class StreamOptions:
    """What to stream and how fast; invalid values raise ValueError naming the field."""

    rate_per_second: float
    # None: until the simulation (and its last label) is done.
    duration_seconds: float | None = None
    label_delay_days: float = 7.0
    config: SimulationConfig = field(default_factory=SimulationConfig)
    # Event-time seconds per wall-clock second, as an extra limit; None: only the rate paces.
    speedup: float | None = None
    slice_seconds: int = 3600
    max_in_flight: int = 256
    client_id: str = CLIENT_ID

    def __post_init__(self) -> None:
        if not _positive(self.rate_per_second):
            raise ValueError(f"rate_per_second must be a number > 0, got {self.rate_per_second!r}")
        if self.duration_seconds is not None and not _positive(self.duration_seconds):
            raise ValueError(
                f"duration_seconds must be a number > 0 or None, got {self.duration_seconds!r}"
            )
        delay = _number(self.label_delay_days)
        if delay is None or delay < 0:
            raise ValueError(
                f"label_delay_days must be a number >= 0, got {self.label_delay_days!r}"
            )
        if not isinstance(self.config, SimulationConfig):
            raise ValueError(f"config must be a SimulationConfig, got {self.config!r}")
        if self.speedup is not None and not _positive(self.speedup):
            raise ValueError(f"speedup must be a number > 0 or None, got {self.speedup!r}")
        for name in ("slice_seconds", "max_in_flight"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.client_id or len(self.client_id) > 128 or not self.client_id.isprintable():
            raise ValueError(
                f"client_id must be 1-128 printable characters, got {self.client_id!r}"
            )

    @property
    def label_delay_us(self) -> int:
        return round(self.label_delay_days * DAY_US)


def customer_card_number(seed: int, customer_id: int) -> str:
    """The customer's card: fixed by the seed and the customer, whatever the size of the run."""
    return synthetic_card_number(random.Random(f"txguard-simulator-card:{seed}:{customer_id}"))


def idempotency_key_prefix(config: SimulationConfig) -> str:
    """Names the simulation: the same TRANSACTION_ID is another transaction in another run."""
    parameters = (
        config.seed,
        config.customers,
        config.terminals,
        config.days,
        config.start_date.isoformat(),
        repr(float(config.radius)),
    )
    digest = hashlib.sha256("|".join(map(str, parameters)).encode()).hexdigest()
    return f"sim-{digest[:16]}-"


def idempotency_key(config: SimulationConfig, transaction_id: int) -> str:
    return f"{idempotency_key_prefix(config)}{transaction_id}"


@dataclass(frozen=True)
class SimulatedRows:
    """The simulation as arrays in event-time order, without what the API would refuse."""

    transaction_ids: npt.NDArray[np.int64]
    times_us: npt.NDArray[np.int64]
    customers: npt.NDArray[np.int64]
    terminals: npt.NDArray[np.int64]
    amounts_minor: npt.NDArray[np.int64]
    frauds: npt.NDArray[np.bool_]
    # Amounts that round to 0.00 EUR: the API requires at least one minor unit.
    zero_amounts: int

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> SimulatedRows:
        amounts = amount_minor(frame["TX_AMOUNT"])
        keep = amounts > 0
        times = frame["TX_DATETIME"].to_numpy(dtype="datetime64[us]").astype(np.int64)
        return cls(
            transaction_ids=frame["TRANSACTION_ID"].to_numpy(dtype=np.int64)[keep],
            times_us=times[keep],
            customers=frame["CUSTOMER_ID"].to_numpy(dtype=np.int64)[keep],
            terminals=frame["TERMINAL_ID"].to_numpy(dtype=np.int64)[keep],
            amounts_minor=amounts[keep],
            frauds=(frame["TX_FRAUD"].to_numpy() == 1)[keep],
            zero_amounts=int((~keep).sum()),
        )

    def __len__(self) -> int:
        return len(self.times_us)


@dataclass
class StreamReport:
    """What the stream did; `failures` > 0 means something sent was not confirmed."""

    target_rate: float
    labels_topic: str
    label_delay_days: float
    transactions: int = 0
    frauds: int = 0
    zero_amounts: int = 0
    sent: int = 0
    accepted: int = 0
    retries: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    first_errors: dict[str, str] = field(default_factory=dict)
    # Sent, but still unanswered when the stop grace period ran out.
    unanswered: int = 0
    labels_published: int = 0
    # Frauds whose transaction the API did not accept.
    labels_skipped: int = 0
    labels_partitions: int = 0
    kafka_undelivered: int = 0
    complete_until_us: int | None = None
    seconds: float = 0.0
    stopped: StopReason = "completed"

    @property
    def failures(self) -> int:
        return sum(self.failed.values()) + self.unanswered + self.kafka_undelivered

    @property
    def achieved_rate(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else 0.0

    def summary_lines(self) -> list[str]:
        ending = {
            "completed": "completed",
            "interrupted": "stopped",
            "duration": "reached its duration",
        }
        lines = [
            f"stream {ending[self.stopped]} after {self.seconds:.1f} s: "
            f"{self.sent:,} of {self.transactions:,} transactions sent, {self.accepted:,} accepted "
            f"({self.achieved_rate:,.0f} tx/s, target {self.target_rate:,.0f}), "
            f"{sum(self.failed.values()):,} failed, {self.unanswered:,} unanswered, "
            f"{self.retries:,} retries",
            f"labels: {self.labels_published:,} published to {self.labels_topic} "
            f"({self.label_delay_days:g} day{'' if self.label_delay_days == 1 else 's'} after "
            f"each fraud), {self.labels_skipped:,} skipped "
            "(transaction not accepted); watermarks complete until "
            f"{format_event_time(self.complete_until_us)} on {self.labels_partitions} partitions",
        ]
        if self.zero_amounts:
            lines.append(
                f"{self.zero_amounts:,} simulated transactions of 0.00 EUR not sent "
                "(the API requires at least one minor unit)"
            )
        for code, count in sorted(self.failed.items()):
            lines.append(f"failed {code}: {count:,} (first: {self.first_errors.get(code, '')})")
        if self.kafka_undelivered:
            lines.append(f"{self.kafka_undelivered:,} labels or watermarks not delivered to Kafka")
        if self.failures:
            lines.append("re-run the same command to re-send: the API stores each key once")
        return lines


def format_event_time(micros: int | None) -> str:
    if micros is None:
        return "-"
    return datetime.fromtimestamp(micros / 1_000_000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def run_stream(
    settings: Settings, options: StreamOptions, *, stop: threading.Event | None = None
) -> int:
    """Stream the simulation into the API at settings.grpc_addr; labels to settings' topics.

    Stops on SIGINT/SIGTERM (when called from the main thread) or when `stop` is set. Exit code:
    0 when everything sent was confirmed (also after an early stop), 1 when something failed or
    Kafka or the API cannot be reached, 2 when the simulated period cannot be sent to the API.
    """
    try:
        report = asyncio.run(stream_simulation(settings, options, stop=stop))
    except StreamError as exc:
        print(f"txguard simulate: {exc}", file=sys.stderr)
        return exc.exit_code
    for line in report.summary_lines():
        print(line, flush=True)
    return 1 if report.failures else 0


async def stream_simulation(
    settings: Settings, options: StreamOptions, *, stop: threading.Event | None = None
) -> StreamReport:
    """The stream itself; raises StreamError when it cannot start."""
    stopping = asyncio.Event()
    with _stop_on_signals(stopping):
        async with _stop_when_set(stop, stopping):
            config = options.config
            print(
                f"simulating {config.customers:,} customers, {config.terminals:,} terminals, "
                f"{config.days:,} days from {config.start_date} (seed {config.seed}) ...",
                flush=True,
            )
            rows = SimulatedRows.from_frame(await asyncio.to_thread(simulate, config))
            _check_event_times(rows, now_us())
            bootstrap, partitions = await asyncio.to_thread(_labels_topic, settings)
            report = StreamReport(
                target_rate=options.rate_per_second,
                labels_topic=settings.topics.labels,
                label_delay_days=options.label_delay_days,
                transactions=len(rows),
                frauds=int(rows.frauds.sum()),
                zero_amounts=rows.zero_amounts,
                labels_partitions=partitions,
            )
            if stopping.is_set():
                report.stopped = "interrupted"
                return report
            async with grpc.aio.insecure_channel(settings.grpc_addr) as channel:
                await _wait_for_api(channel, settings.grpc_addr)
                producer = make_producer(bootstrap, client_id=options.client_id)
                streamer = _Streamer(
                    options,
                    TransactionClient(channel, options.client_id),
                    producer,
                    settings.topics.labels,
                    partitions,
                    stopping,
                    report,
                )
                print(
                    f"streaming {report.transactions:,} transactions ({report.frauds:,} frauds) "
                    f"to {settings.grpc_addr} at {options.rate_per_second:g} tx/s, labels to "
                    f"{settings.topics.labels} (Ctrl-C to stop)",
                    flush=True,
                )
                await streamer.stream(rows)
                await streamer.flush()
            return report


class _Streamer:
    """Paces the requests, publishes labels and watermarks, and keeps the report."""

    def __init__(
        self,
        options: StreamOptions,
        client: TransactionClient,
        producer: Producer,
        labels_topic: str,
        labels_partitions: int,
        stopping: asyncio.Event,
        report: StreamReport,
    ) -> None:
        self._options = options
        self._client = client
        self._producer = producer
        self._labels_topic = labels_topic
        self._labels_partitions = labels_partitions
        self._stopping = stopping
        self._report = report
        self._slots = asyncio.Semaphore(options.max_in_flight)
        self._in_flight: set[asyncio.Task[str | None]] = set()
        self._fraud_sends: dict[int, asyncio.Task[str | None]] = {}
        self._last_send_of_customer: dict[int, asyncio.Task[str | None]] = {}
        self._key_prefix = idempotency_key_prefix(options.config)
        self._cards: dict[int, str] = {}
        self._crash: BaseException | None = None
        self._duration_elapsed = False
        self._started = time.monotonic()
        self._first_event_us = 0

    async def stream(self, rows: SimulatedRows) -> None:
        """Send everything (or until stopped), then wait for the answers."""
        loop = asyncio.get_running_loop()
        timer = (
            loop.call_later(self._options.duration_seconds, self._end_of_duration)
            if self._options.duration_seconds is not None
            else None
        )
        progress = asyncio.create_task(self._show_progress())
        self._started = time.monotonic()
        try:
            await self._send_all(rows)
            await self._drain()
        finally:
            self._report.seconds = time.monotonic() - self._started
            if timer is not None:
                timer.cancel()
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
        if self._crash is not None:
            raise self._crash
        if self._duration_elapsed:
            self._report.stopped = "duration"
        elif self._stopping.is_set():
            self._report.stopped = "interrupted"

    async def flush(self) -> None:
        """Wait (bounded) until every label and watermark produced is acknowledged."""
        deadline = time.monotonic() + _FLUSH_TIMEOUT_SECONDS
        while len(self._producer) > 0 and time.monotonic() < deadline:
            self._producer.flush(_WAIT_STEP_SECONDS)
            await asyncio.sleep(0)
        self._report.kafka_undelivered += len(self._producer)

    async def _send_all(self, rows: SimulatedRows) -> None:
        """Slice by slice: its transactions, then the labels known by its end, then watermarks."""
        if len(rows) == 0:
            return
        times = rows.times_us
        slice_us = self._options.slice_seconds * 1_000_000
        fraud_rows = np.flatnonzero(rows.frauds)
        # Times are sorted and the delay is constant, so known_at is sorted too.
        known_at = times[fraud_rows] + self._options.label_delay_us
        self._first_event_us = int(times[0])
        end_us = int(max(times[-1], known_at[-1] if len(known_at) else times[-1]))
        interval = 1.0 / self._options.rate_per_second
        slot = self._started - interval
        cursor = label_cursor = 0
        for slice_start in range(self._first_event_us // slice_us * slice_us, end_us + 1, slice_us):
            slice_end = slice_start + slice_us
            while cursor < len(rows) and times[cursor] < slice_end:
                slot = max(slot + interval, self._event_slot(int(times[cursor])))
                if not await self._wait_until(slot):
                    return
                await self._slots.acquire()
                self._send(rows, cursor)
                cursor += 1
            if self._options.speedup is not None and not await self._wait_until(
                self._event_slot(slice_end)
            ):
                return
            if self._stopping.is_set():
                return
            label_stop = int(np.searchsorted(known_at, slice_end, side="left"))
            for index in range(label_cursor, label_stop):
                await self._publish_label(rows, int(fraud_rows[index]), int(known_at[index]))
            label_cursor = label_stop
            self._publish_watermarks(slice_end - 1)

    def _event_slot(self, event_us: int) -> float:
        if self._options.speedup is None:
            return self._started
        elapsed = (event_us - self._first_event_us) / 1_000_000
        return self._started + elapsed / self._options.speedup

    async def _wait_until(self, when: float) -> bool:
        """Sleep until `when` (monotonic); False if the stream is stopping."""
        while not self._stopping.is_set() and self._crash is None:
            remaining = when - time.monotonic()
            if remaining <= 0:
                return True
            await asyncio.sleep(min(remaining, _WAIT_STEP_SECONDS))
        return False

    def _send(self, rows: SimulatedRows, row: int) -> None:
        customer = int(rows.customers[row])
        previous = self._last_send_of_customer.get(customer)
        task = asyncio.create_task(self._create(self._request(rows, row, customer), previous))
        self._in_flight.add(task)
        task.add_done_callback(self._finished)
        self._last_send_of_customer[customer] = task
        if rows.frauds[row]:
            self._fraud_sends[row] = task
        self._report.sent += 1

    def _request(self, rows: SimulatedRows, row: int, customer: int) -> CreateTransactionRequest:
        card = self._cards.get(customer)
        if card is None:
            card = self._cards[customer] = customer_card_number(self._options.config.seed, customer)
        request = CreateTransactionRequest(
            idempotency_key=f"{self._key_prefix}{int(rows.transaction_ids[row])}",
            account_id=account_id(customer),
            amount_minor=int(rows.amounts_minor[row]),
            currency=CURRENCY,
            terminal_id=terminal_id(int(rows.terminals[row])),
            card_number=card,
        )
        set_timestamp_us(request.occurred_at, int(rows.times_us[row]))
        return request

    async def _create(
        self, request: CreateTransactionRequest, previous: asyncio.Task[str | None] | None
    ) -> str | None:
        """The stored transaction id, or None when the API refused or never confirmed it."""
        report = self._report
        try:
            if previous is not None and not previous.done():
                # A customer's transactions reach the API, and so Kafka, in event-time order.
                await asyncio.wait({previous})
            backoff = 0.02
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    response = await self._client.create(request, timeout=_REQUEST_TIMEOUT_SECONDS)
                except grpc.aio.AioRpcError as error:
                    code = error.code()
                    if code in RETRYABLE_CODES and attempt < _ATTEMPTS:
                        report.retries += 1
                        await asyncio.sleep(random.uniform(backoff / 2, backoff))
                        backoff = min(backoff * 2, 2.0)
                        continue
                    report.failed[code.name] += 1
                    report.first_errors.setdefault(code.name, error.details() or "")
                    return None
                report.accepted += 1
                return response.transaction.transaction_id
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._slots.release()

    def _finished(self, task: asyncio.Task[str | None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None and self._crash is None:
            self._crash = task.exception()

    async def _drain(self) -> None:
        """Wait for every answer; once stopping, for at most the grace period."""
        deadline: float | None = None
        while self._in_flight:
            if self._stopping.is_set() and deadline is None:
                deadline = time.monotonic() + _STOP_GRACE_SECONDS
            if deadline is not None and time.monotonic() >= deadline:
                abandoned = list(self._in_flight)
                for task in abandoned:
                    task.cancel()
                await asyncio.gather(*abandoned, return_exceptions=True)
                self._report.unanswered += len(abandoned)
                return
            await asyncio.wait(set(self._in_flight), timeout=_WAIT_STEP_SECONDS)

    async def _publish_label(self, rows: SimulatedRows, row: int, known_at_us: int) -> None:
        transaction_id = await self._fraud_sends.pop(row)
        if transaction_id is None:
            self._report.labels_skipped += 1
            return
        self._produce(
            label_record(
                self._labels_topic,
                transaction_id,
                int(rows.customers[row]),
                int(rows.terminals[row]),
                int(rows.times_us[row]),
                known_at_us,
                source=SIMULATOR_SOURCE,
            ),
            self._label_delivered,
        )

    def _publish_watermarks(self, complete_until_us: int) -> None:
        for record in watermark_records(
            ((self._labels_topic, self._labels_partitions),),
            complete_until_us,
            source=SIMULATOR_SOURCE,
        ):
            self._produce(record, self._watermark_delivered)
        self._report.complete_until_us = complete_until_us

    def _produce(self, record: OutgoingRecord, on_delivery: DeliveryCallback) -> None:
        produce_with_backpressure(self._producer, record, on_delivery=on_delivery, on_retry=_no_op)
        self._producer.poll(0)

    def _label_delivered(self, error: KafkaError | None, _message: Message) -> None:
        if error is None:
            self._report.labels_published += 1
        else:
            self._report.kafka_undelivered += 1

    def _watermark_delivered(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._report.kafka_undelivered += 1

    def _end_of_duration(self) -> None:
        self._duration_elapsed = True
        self._stopping.set()

    async def _show_progress(self) -> None:
        report = self._report
        previous_at, previous_accepted = time.monotonic(), 0
        next_line = previous_at + _PROGRESS_EVERY_SECONDS
        while True:
            await asyncio.sleep(_WAIT_STEP_SECONDS * 5)
            self._producer.poll(0)
            now = time.monotonic()
            if now < next_line:
                continue
            rate = (report.accepted - previous_accepted) / (now - previous_at)
            print(
                f"[{now - self._started:7.0f} s] event time "
                f"{format_event_time(report.complete_until_us)}: {report.sent:,} sent, "
                f"{report.accepted:,} accepted, {sum(report.failed.values()):,} failed, "
                f"{report.labels_published:,} labels; {rate:,.0f} tx/s",
                flush=True,
            )
            previous_at, previous_accepted = now, report.accepted
            next_line = now + _PROGRESS_EVERY_SECONDS


def _no_op() -> None:
    return None


def _check_event_times(rows: SimulatedRows, now: int) -> None:
    """The API refuses event times before 2000 or more than 5 minutes ahead of its clock."""
    if len(rows) == 0:
        return
    first, last = int(rows.times_us[0]), int(rows.times_us[-1])
    if first < EARLIEST_OCCURRED_AT_SECONDS * 1_000_000:
        raise StreamError(
            f"the simulation starts at {format_event_time(first)}, but the API refuses event "
            "times before 2000-01-01: choose a later --start-date",
            exit_code=2,
        )
    if last > now + MAX_FUTURE_SKEW_US:
        raise StreamError(
            f"the simulation runs until {format_event_time(last)}, which is in the future, and "
            "the API refuses event times more than 5 minutes ahead: choose an earlier "
            "--start-date or fewer --days",
            exit_code=2,
        )


def _labels_topic(settings: Settings) -> tuple[str, int]:
    """The bootstrap address and the labels topic's partition count (topics created if missing)."""
    try:
        bootstrap = resolve_bootstrap(settings)
    except KafkaNotRunning as exc:
        raise StreamError(str(exc), exit_code=1) from exc
    try:
        ensure_topics(bootstrap, settings, timeout=15.0)
        partitions = existing_partition_counts(bootstrap)[settings.topics.labels]
    except (KafkaException, TopicError, KeyError) as exc:
        raise StreamError(
            f"cannot use the labels topic {settings.topics.labels} on Kafka at {bootstrap}: "
            f"{exc}; check `txguard kafka status` or TXGUARD_KAFKA_BOOTSTRAP",
            exit_code=1,
        ) from exc
    return bootstrap, partitions


async def _wait_for_api(channel: grpc.aio.Channel, target: str) -> None:
    try:
        await asyncio.wait_for(channel.channel_ready(), _CONNECT_TIMEOUT_SECONDS)
    except TimeoutError as exc:
        raise StreamError(
            f"no transaction API answers at {target} within {_CONNECT_TIMEOUT_SECONDS:.0f} s: "
            "start it with `txguard serve transactions`, or set TXGUARD_GRPC_ADDR",
            exit_code=1,
        ) from exc


@contextlib.contextmanager
def _stop_on_signals(stopping: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stopping`; only the main thread can take signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for number in signals:
        loop.add_signal_handler(number, stopping.set)
    try:
        yield
    finally:
        for number in signals:
            loop.remove_signal_handler(number)


@contextlib.asynccontextmanager
async def _stop_when_set(
    stop: threading.Event | None, stopping: asyncio.Event
) -> AsyncIterator[None]:
    """Relays a stop event set from another thread to the loop."""
    if stop is None:
        yield
        return

    async def watch() -> None:
        while not stop.is_set():
            await asyncio.sleep(_WAIT_STEP_SECONDS)
        stopping.set()

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
