"""Each service's /metrics, scraped over HTTP from real `txguard serve` processes.

The services run as separate processes (each with its own registry, so every value is exactly
what this test caused) on free metrics ports. The transaction API runs without its relay first,
so the backlog can be seen building up; a relay that cannot reach Kafka then reports it, and a
relay that can publishes it. Decisions for the transactions are published by the test itself
(the detector is not part of this test) and applied by a real applier.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from confluent_kafka import KafkaError, Message
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import KafkaBroker, free_tcp_port
from txguard import __version__
from txguard.clock import now_us, timestamp_from_us
from txguard.config import DECISIONS_TOPIC, TRANSACTIONS_TOPIC
from txguard.demo.processes import ServiceProcess, start_service, wait_for_grpc_serving
from txguard.kafka import serde
from txguard.kafka.clients import make_producer
from txguard.schema.luhn import with_check_digit
from txguard.schema.v1 import service_pb2_grpc
from txguard.schema.v1.decision_pb2 import FraudDecision, Outcome
from txguard.schema.v1.service_pb2 import CreateTransactionRequest, CreateTransactionResponse
from txguard.schema.v1.transaction_pb2 import Transaction

pytestmark = pytest.mark.integration

ACCEPTED = 25
INVALID = 3
REPLAYED = 2


@dataclass(frozen=True)
class Scrape:
    """One scrape of an endpoint: every sample by name and labels."""

    samples: list[tuple[str, dict[str, str], float]]

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample with exactly these labels, or None."""
        for sample_name, sample_labels, value in self.samples:
            if sample_name == name and sample_labels == labels:
                return value
        return None

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples whose labels include these."""
        return sum(
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and labels.items() <= sample_labels.items()
        )

    def series(self, name: str, **labels: str) -> list[dict[str, str]]:
        return [
            sample_labels
            for sample_name, sample_labels, _ in self.samples
            if sample_name == name and labels.items() <= sample_labels.items()
        ]


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return Scrape(
        [
            (sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]
    )


def scrape_until(port: int, condition: Callable[[Scrape], bool], timeout: float = 60.0) -> Scrape:
    """Scrape until `condition` holds; the last scrape is returned (or shown on failure)."""
    deadline = time.monotonic() + timeout
    last: Scrape | None = None
    while time.monotonic() < deadline:
        try:
            last = scrape(port)
        except (urllib.error.URLError, ConnectionError):
            last = None
        if last is not None and condition(last):
            return last
        time.sleep(0.2)
    shown = "" if last is None else "\n".join(map(str, last.samples))
    raise AssertionError(f"metrics on port {port} never met the condition; last scrape:\n{shown}")


class Services:
    """Real `txguard serve` processes of one test; all stopped (and checked) on exit."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.running: list[ServiceProcess] = []

    def start(
        self, service: str, *, metrics_port: int, args: tuple[str, ...] = (), **env: str
    ) -> ServiceProcess:
        process = start_service(
            service,
            env={**self.env, "TXGUARD_METRICS_PORT": str(metrics_port), **env},
            log_dir=self.log_dir / f"{service}-{metrics_port}",
            extra_args=args,
        )
        self.running.append(process)
        return process

    def stop(self, process: ServiceProcess) -> None:
        code = process.terminate(timeout=60)
        self.running.remove(process)
        assert code == 0, f"{process.name} exited with {code}:\n{process.log_tail(40)}"

    def stop_all(self) -> None:
        for process in list(self.running):
            self.stop(process)


@pytest.fixture
def services(txguard_env: dict[str, str], tmp_path: Path) -> Iterator[Services]:
    running = Services({**txguard_env, "PYTHONUNBUFFERED": "1"}, tmp_path / "logs")
    try:
        yield running
    finally:
        running.stop_all()


def create_request(index: int, run: str, amount_minor: int = 1_000) -> CreateTransactionRequest:
    return CreateTransactionRequest(
        idempotency_key=f"{run}-{index}",
        account_id=f"metrics-{run}-{index % 5}",
        amount_minor=amount_minor,
        currency="EUR",
        terminal_id=f"terminal-{index % 3}",
        card_number=with_check_digit(f"4{index:014d}"),
    )


def send_transactions(target: str, run: str) -> list[Transaction]:
    """ACCEPTED new transactions, REPLAYED retries of the first ones, INVALID bad requests."""
    metadata = (("x-client-id", "metrics-test"),)
    accepted: list[Transaction] = []
    with grpc.insecure_channel(target) as channel:
        create: Callable[..., CreateTransactionResponse] = service_pb2_grpc.TransactionServiceStub(
            channel
        ).CreateTransaction
        for index in range(ACCEPTED):
            accepted.append(create(create_request(index, run), metadata=metadata).transaction)
        for index in range(REPLAYED):
            replay = create(create_request(index, run), metadata=metadata).transaction
            assert replay.transaction_id == accepted[index].transaction_id
        for index in range(INVALID):
            with pytest.raises(grpc.RpcError) as failed:
                create(create_request(1_000 + index, run, amount_minor=0), metadata=metadata)
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return accepted


def publish_decisions(bootstrap: str, transactions: list[Transaction]) -> None:
    producer = make_producer(bootstrap, client_id="test-metrics-decisions")
    errors: list[KafkaError] = []

    def report(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            errors.append(error)

    try:
        for tx in transactions:
            decision = FraudDecision(
                decision_id=uuid.uuid4().hex,
                event_id=uuid.uuid4().hex,
                transaction_id=tx.transaction_id,
                account_id=tx.account_id,
                score=0.1,
                outcome=Outcome.OUTCOME_APPROVE,
                model_version="rules-only",
                rules_version="rules-1",
                decided_at=timestamp_from_us(now_us()),
                accepted_at=tx.accepted_at,
                occurred_at=tx.occurred_at,
            )
            encoded = serde.encode_decision(decision)
            producer.produce(
                DECISIONS_TOPIC,
                key=encoded.key,
                value=encoded.value,
                headers=list(encoded.headers),
                on_delivery=report,
            )
        assert producer.flush(30) == 0
    finally:
        producer.close()
    assert not errors, errors


def test_services_report_what_they_did(services: Services, kafka_broker: KafkaBroker) -> None:
    run = uuid.uuid4().hex[:10]
    api_port, stalled_relay_port, relay_port, applier_port = (free_tcp_port() for _ in range(4))

    # 1. The API alone: everything it accepts waits in the outbox.
    api = services.start("transactions", metrics_port=api_port, args=("--no-relay",))
    wait_for_grpc_serving(services.env["TXGUARD_GRPC_ADDR"], api)
    started_us = now_us()
    accepted = send_transactions(services.env["TXGUARD_GRPC_ADDR"], run)
    assert len({tx.transaction_id for tx in accepted}) == ACCEPTED
    sent_us = now_us()

    metrics = scrape(api_port)
    assert metrics.value("txguard_service_info", service="transactions", version=__version__) == 1
    # Only a detector scores: no model line here, not even one without labels.
    assert metrics.series("txguard_model_info") == []
    assert metrics.value("txguard_transactions_accepted_total") == ACCEPTED
    assert metrics.value("txguard_transactions_replayed_total") == REPLAYED
    assert metrics.value("txguard_transactions_rejected_total", reason="invalid_argument") == (
        INVALID
    )
    assert metrics.value("txguard_transactions_rejected_total", reason="store_unavailable") == 0
    assert (
        metrics.value("txguard_transaction_field_violations_total", field="amount_minor") == INVALID
    )
    create = {"method": "CreateTransaction"}
    assert (
        metrics.value("txguard_api_request_duration_seconds_count", **create, code="OK")
        == ACCEPTED + REPLAYED
    )
    assert (
        metrics.value(
            "txguard_api_request_duration_seconds_count", **create, code="INVALID_ARGUMENT"
        )
        == INVALID
    )
    assert metrics.total("txguard_store_commit_batch_records_sum") == ACCEPTED + REPLAYED
    # No card number in any label or value of the exposition.
    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics") as reply:
        exposition = reply.read()
    assert with_check_digit(f"4{0:014d}").encode() not in exposition

    # 2. A relay that cannot reach Kafka reports the backlog, and its age growing.
    unreachable = f"127.0.0.1:{free_tcp_port()}"
    stalled = services.start(
        "relay", metrics_port=stalled_relay_port, TXGUARD_KAFKA_BOOTSTRAP=unreachable
    )
    waiting = scrape_until(
        stalled_relay_port, lambda m: m.value("txguard_outbox_backlog_events") == ACCEPTED
    )
    age = waiting.value("txguard_outbox_oldest_unpublished_age_seconds")
    assert age is not None and 0 < age <= (now_us() - started_us) / 1e6 + 1
    assert waiting.total("txguard_outbox_records_published_total") == 0
    services.stop(stalled)
    stalled_until_us = now_us()

    # 3. A relay that reaches Kafka publishes all of it, and the backlog drains to zero.
    relay = services.start("relay", metrics_port=relay_port)
    published = scrape_until(
        relay_port,
        lambda m: (
            m.value("txguard_outbox_records_published_total", topic=TRANSACTIONS_TOPIC) == ACCEPTED
            and m.value("txguard_outbox_backlog_events") == 0
        ),
    )
    assert published.value("txguard_outbox_oldest_unpublished_age_seconds") == 0
    assert published.value("txguard_service_info", service="relay", version=__version__) == 1
    latency_count = "txguard_end_to_end_latency_seconds_count"
    assert published.value(latency_count, stage="published") == ACCEPTED
    # Every event waited at least through step 2 before it was published.
    waited = (stalled_until_us - sent_us) / 1e6
    latency_sum = published.value("txguard_end_to_end_latency_seconds_sum", stage="published")
    assert latency_sum is not None and latency_sum >= ACCEPTED * waited
    assert published.value("txguard_outbox_delivery_failures_total") == 0
    # librdkafka statistics arrive every 10 s: the relay's producer is connected.
    relay_connected = scrape_until(
        relay_port,
        lambda m: bool(m.series("txguard_kafka_broker_connected", client="txguard-outbox-relay")),
        timeout=30,
    )
    assert all(
        relay_connected.value("txguard_kafka_broker_connected", **labels) == 1
        for labels in relay_connected.series("txguard_kafka_broker_connected")
    )

    # 4. The applier applies a decision for each, and reports end-to-end latency and lag.
    publish_decisions(kafka_broker.bootstrap, accepted)
    applier = services.start("applier", metrics_port=applier_port)
    applied = scrape_until(
        applier_port,
        lambda m: m.value("txguard_applier_decisions_total", result="applied") == ACCEPTED,
    )
    assert applied.value(latency_count, stage="applied") == ACCEPTED
    assert applied.value("txguard_applier_decisions_total", result="duplicate") == 0
    consumed = applied.total("txguard_consumer_records_consumed_total", service="applier")
    processed = applied.total("txguard_consumer_records_processed_total", service="applier")
    assert consumed >= ACCEPTED and processed >= ACCEPTED
    assert applied.value("txguard_consumer_rebalances_total", service="applier", kind="assigned")
    # Once everything on the topic is processed, every assigned partition is caught up.
    caught_up = scrape_until(
        applier_port,
        lambda m: (
            bool(m.series("txguard_consumer_lag_records", service="applier"))
            and m.total("txguard_consumer_lag_records", service="applier") == 0
            and all(
                m.value("txguard_consumer_lag_seconds", **labels) == 0
                for labels in m.series("txguard_consumer_lag_seconds", service="applier")
            )
        ),
    )
    partitions = caught_up.series("txguard_consumer_lag_records", service="applier")
    assert {labels["topic"] for labels in partitions} == {DECISIONS_TOPIC}
    assert caught_up.value("txguard_consumer_assigned_partitions", service="applier") == len(
        partitions
    )
    scrape_until(
        applier_port,
        lambda m: (
            m.value(
                "txguard_kafka_broker_connected",
                client="txguard-applier",
                client_type="consumer",
                broker=_learned_broker(m, "txguard-applier"),
            )
            == 1
        ),
        timeout=30,
    )

    services.stop(applier)
    services.stop(relay)
    services.stop(api)


def _learned_broker(metrics: Scrape, client: str) -> str:
    brokers = [
        labels["broker"]
        for labels in metrics.series("txguard_kafka_broker_connected", client=client)
        if not labels["broker"].endswith("/bootstrap")
    ]
    return brokers[0] if brokers else "(none yet)"


def test_a_taken_metrics_port_stops_the_service_with_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "txguard", "serve", "applier"],
            env={
                "PATH": "/usr/bin:/bin",
                "TXGUARD_HOME": str(tmp_path / "home"),
                "TXGUARD_METRICS_PORT": str(port),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("txguard serve applier: cannot serve metrics on ")
    assert f":{port} (the port is in use)" in lines[0]
    assert "TXGUARD_METRICS_PORT" in lines[0]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "TXGUARD_LOG_LEVEL",
            "LOUD",
            "TXGUARD_LOG_LEVEL must be a logging level (DEBUG, INFO, WARNING, ERROR, CRITICAL), "
            "got 'LOUD'",
        ),
        ("TXGUARD_METRICS_PORT", "70000", "TXGUARD_METRICS_PORT must be at most 65535, got 70000"),
    ],
)
def test_a_bad_setting_stops_a_service_with_one_line(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "txguard", "serve", "applier"],
        env={"PATH": "/usr/bin:/bin", "TXGUARD_HOME": str(tmp_path / "home"), variable: value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"txguard: configuration error: {message}"]
