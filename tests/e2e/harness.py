"""End-to-end test helpers: real service processes, a retrying client, topic and store reads."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from confluent_kafka import Consumer, Producer, TopicPartition

from txguard.demo.processes import ServiceProcess, start_service, wait_for_grpc_serving
from txguard.kafka.consumer_loop import OutgoingRecord
from txguard.kafka.serde import HEADER_EVENT_ID, header_value
from txguard.schema.v1.service_pb2 import CreateTransactionRequest
from txguard.schema.v1.service_pb2_grpc import TransactionServiceStub
from txguard.simulate.cards import synthetic_card_number

if TYPE_CHECKING:
    # Exists only in the typing stubs: the type a stub has on an asyncio channel.
    from txguard.schema.v1.service_pb2_grpc import TransactionServiceAsyncStub

# A client that does not know whether a failed call was stored retries it with the same key;
# only these answers are final.
FINAL_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}


class Pipeline:
    """The services of one test, each a real `txguard serve` process."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.processes: dict[str, ServiceProcess] = {}

    @property
    def grpc_target(self) -> str:
        return self.env["TXGUARD_GRPC_ADDR"]

    def start(self, *services: str) -> None:
        """Start the services and wait until each can take a signal: the transactions service
        answers its health check, the others have logged that they are starting (which they do
        once their SIGTERM handler is in place), so a stop right after a start drains."""
        log_sizes = {}
        for name in services:
            log_path = self.log_dir / f"{name}.log"
            log_sizes[name] = log_path.stat().st_size if log_path.exists() else 0
            self.processes[name] = start_service(name, env=self.env, log_dir=self.log_dir)
        for name in services:
            if name == "transactions":
                wait_for_grpc_serving(self.grpc_target, self.processes[name])
            else:
                wait_for_log_line(self.processes[name], f"starting {name}", log_sizes[name])

    def kill(self, name: str) -> None:
        process = self.processes[name].process
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self, name: str) -> int:
        return self.processes[name].terminate(timeout=60)

    def stop_all(self) -> dict[str, int]:
        return {name: proc.terminate(timeout=60) for name, proc in self.processes.items()}

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


def wait_for_log_line(
    service: ServiceProcess, text: str, offset: int, timeout: float = 60.0
) -> None:
    """Wait until `text` appears in the service's log after byte `offset`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with service.log_path.open("rb") as log_file:
            log_file.seek(offset)
            if text.encode() in log_file.read():
                return
        if not service.alive():
            raise RuntimeError(service.exit_report())
        time.sleep(0.05)
    raise TimeoutError(f"{service.name} did not log {text!r} within {timeout:.0f} s")


class RepeatedKill:
    """Kills one service with SIGKILL `times` times from a thread, restarting it after each kill.

    `wait_before_kill(done)` decides when the next kill lands; it returns early once `done` is set.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        service: str,
        *,
        times: int,
        wait_before_kill: Callable[[threading.Event], object],
    ) -> None:
        self.pipeline = pipeline
        self.service = service
        self.times = times
        self.kills = 0
        self._wait = wait_before_kill
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kill-{service}")

    def _run(self) -> None:
        while self.kills < self.times and not self._done.is_set():
            self._wait(self._done)
            self.pipeline.kill(self.service)
            self.kills += 1
            self.pipeline.start(self.service)

    def __enter__(self) -> RepeatedKill:
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        """Wait for all `times` kills (and the restarts after them) without cutting them short."""
        self._thread.join(timeout)

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()


@dataclass
class Customer:
    account_id: str
    card_number: str


def make_customers(count: int, seed: int) -> list[Customer]:
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:10]
    return [
        Customer(f"e2e-{run}-{index:05d}", synthetic_card_number(rng)) for index in range(count)
    ]


def make_requests(
    customers: Sequence[Customer], count: int, seed: int
) -> list[CreateTransactionRequest]:
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        customer = rng.choice(customers)
        requests.append(
            CreateTransactionRequest(
                idempotency_key=uuid.uuid4().hex,
                account_id=customer.account_id,
                amount_minor=rng.randint(100, 900_000),
                currency="EUR",
                terminal_id=f"term-{rng.randrange(100)}",
                card_number=customer.card_number,
            )
        )
    return requests


@dataclass
class ClientResult:
    """What the client learned: the transaction id acknowledged for each idempotency key."""

    acknowledged: dict[str, str] = field(default_factory=dict)
    retries: int = 0
    final_errors: list[str] = field(default_factory=list)


async def send_with_retries(
    target: str,
    requests: Iterable[CreateTransactionRequest],
    *,
    client_id: str = "e2e-client",
    concurrency: int = 32,
    rate_per_second: float | None = None,
    give_up_after: float = 180.0,
) -> ClientResult:
    """Send each request until it is acknowledged, retrying every non-final error with its key."""
    result = ClientResult()
    slots = asyncio.Semaphore(concurrency)
    metadata = (("x-client-id", client_id),)
    started = time.monotonic()

    async def one(stub: TransactionServiceAsyncStub, request: CreateTransactionRequest) -> None:
        async with slots:
            deadline = time.monotonic() + give_up_after
            delay = 0.05
            while True:
                try:
                    response = await stub.CreateTransaction(request, metadata=metadata, timeout=5)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in FINAL_CODES or time.monotonic() > deadline:
                        result.final_errors.append(f"{exc.code().name}: {exc.details()}")
                        return
                    result.retries += 1
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                result.acknowledged[request.idempotency_key] = response.transaction.transaction_id
                return

    async with grpc.aio.insecure_channel(target) as channel:
        stub = TransactionServiceStub(channel)
        tasks = []
        for index, request in enumerate(requests):
            if rate_per_second is not None:
                due = started + index / rate_per_second
                pause = due - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
            tasks.append(asyncio.create_task(one(stub, request)))
        await asyncio.gather(*tasks)
    return result


def open_store_readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def wait_for_decisions(
    store_path: Path, transaction_ids: Iterable[str], timeout: float = 180.0
) -> set[str]:
    """Poll the store until every id has an applied decision; returns the ids still missing."""
    wanted = set(transaction_ids)
    deadline = time.monotonic() + timeout
    missing = set(wanted)
    while time.monotonic() < deadline:
        with open_store_readonly(store_path) as db:
            decided = {
                row[0]
                for row in db.execute(
                    "SELECT transaction_id FROM transactions WHERE decision_id IS NOT NULL"
                )
            }
        missing = wanted - decided
        if not missing:
            return missing
        time.sleep(0.5)
    return missing


@dataclass(frozen=True)
class TopicRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def event_id(self) -> str | None:
        found = header_value(self.headers, HEADER_EVENT_ID)
        return found.decode() if found is not None else None


def produce_slices(
    bootstrap: str,
    slices: Sequence[Sequence[OutgoingRecord]],
    *,
    pause_seconds: float,
    before_slice: Callable[[int], None] | None = None,
) -> None:
    """Produce slices of records (e.g. a replay's), pausing between them to spread the load."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for index, batch in enumerate(slices):
        if before_slice is not None:
            before_slice(index)
        for record in batch:
            producer.produce(
                record.topic,
                value=record.value,
                key=record.key,
                partition=record.partition,
                headers=list(record.headers),
            )
        producer.poll(0)
        time.sleep(pause_seconds)
    assert producer.flush(60) == 0


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[TopicRecord]:
    """Every record of every partition, from the beginning to the current end, in offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"e2e-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        ends = {}
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        records: list[TopicRecord] = []
        positions = {p: -1 for p in ends}
        deadline = time.monotonic() + timeout
        while any(positions[p] < ends[p] - 1 for p in ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
            for message in consumer.consume(num_messages=1000, timeout=1.0):
                partition, offset = message.partition(), message.offset()
                if message.error() or partition is None or offset is None:
                    continue
                positions[partition] = offset
                raw = message.headers() or []
                pairs = raw.items() if isinstance(raw, dict) else raw
                headers = [(k, v) for k, v in pairs if isinstance(v, bytes)]
                key, value = message.key(), message.value()
                records.append(
                    TopicRecord(
                        topic,
                        partition,
                        offset,
                        key.encode() if isinstance(key, str) else key,
                        value.encode() if isinstance(value, str) else value,
                        headers,
                    )
                )
        return records
    finally:
        consumer.close()
