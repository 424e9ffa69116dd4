"""A real Prometheus scrapes a pipeline under load with deploy/prometheus's scrape jobs and rules.

Every service runs as its own `txguard serve` process on its own metrics port, on a topic
namespace of its own (no other test's records in the way). Prometheus runs with a copy of
deploy/prometheus/prometheus.yml in which only the targets (the test's ports) and the intervals
(1 s) differ; its rule file is deploy/prometheus/alerts.yml itself. The test then checks:

1. Every panel query of every dashboard in deploy/grafana/dashboards returns data while load
   runs. Poison records, replayed and invalid requests, large amounts and fraud-label watermarks
   are sent on purpose, so that dead letters, replays, rejections, rule hits and the terminal
   table's lag have something to show. Two panels cannot show an
   event a short test could cause: retries (every provokable retry needs the store locked past
   its 30 s busy timeout, or the relay held up): their series are checked, at 0; and the decline
   ratio of the hour before, which needs five minutes of history: its rule's expression is
   checked without the offset.
2. Lag seconds of a live consumer, exactly: the store is locked and a decision sent, so the applier
   is stuck inside a batch while its endpoint answers. Its committed offsets are then the first
   records of that batch and do not move; the age of the record at each committed offset, at the
   timestamp of Prometheus' last scrape, must equal the value of that scrape. A partition with no
   record in the stuck batch reports its last processed record instead (the documented upper
   bound), or 0 when its records arrived after the loop last read its high watermark: a loop stuck
   in a batch reads no watermarks, so such a partition under-reports until the loop moves on (a
   limit of measuring lag inside the consumer, accepted here and not hidden).
3. A stopped detector (SIGTERM: it commits what it processed, so its committed offsets are its
   position) makes TxguardConsumerLagHigh's expression true within its threshold, and the lag
   Prometheus then holds for it (the lag it last reported plus the time since its last poll)
   matches the age of the record at each committed offset, read independently, within one scrape
   interval. Restarting the detector clears the expression once it has caught up.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.conftest import KafkaBroker, free_tcp_port
from tests.support import committed_offsets
from txguard.clock import now_us
from txguard.config import Settings, TopicNames
from txguard.demo.processes import ServiceProcess, start_service, wait_for_grpc_serving
from txguard.kafka.clients import make_admin, make_producer
from txguard.kafka.serde import encode_decision
from txguard.kafka.topics import ensure_topics
from txguard.replay.events import watermark_records
from txguard.schema.v1.decision_pb2 import FraudDecision, Outcome
from txguard.schema.v1.service_pb2 import CreateTransactionRequest
from txguard.schema.v1.service_pb2_grpc import TransactionServiceStub
from txguard.simulate.load_generator import LoadStats, TransactionFactory, generate_load

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
SERVICES = ("transactions", "detector", "applier", "terminal-risk")
SCRAPE_INTERVAL = 1.0
# Modest: the 2-core machine also runs the broker, four services and Prometheus.
LOAD_PER_SECOND = 40.0
# Grafana's macros as Grafana would fill them for a 1 s scrape interval (4 scrapes and more).
GRAFANA_VARIABLES = {"__rate_interval": "10s", "__interval": "2s", "interval": "2s"}
# Panels that must show an event the test causes on purpose: query fragment -> why.
MUST_BE_POSITIVE = {
    "txguard_transactions_replayed_total": "requests are replayed on purpose",
    "txguard_transactions_rejected_total": "invalid requests are sent on purpose",
    "txguard_dead_letter_records_total": "a poison record is produced on purpose",
    "txguard_rule_hits_total": "large amounts are sent on purpose",
    "txguard_decisions_total": "load runs",
}
# Prometheus' timestamp is the scrape's start; the endpoint computes the age a moment later, on
# a machine shared with the broker and every service.
SCRAPE_TIMING_ALLOWANCE = 0.25
# A record produced just before a consumer's last poll may not have reached it yet.
FETCH_LATENCY_ALLOWANCE = 0.5


# -- Prometheus -----------------------------------------------------------------------------------


def prometheus_config(ports: Mapping[str, int]) -> str:
    """deploy/prometheus/prometheus.yml with the test's targets, 1 s intervals, absolute rule files.

    Edited line by line, so every job, label and rule file stays exactly as deployed; a job the
    test does not run fails here rather than scraping nothing.
    """
    lines: list[str] = []
    job: str | None = None
    in_rule_files = False
    for line in (PROMETHEUS_DIR / "prometheus.yml").read_text().splitlines():
        stripped = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if stripped.startswith("#") or not stripped:
            lines.append(line)
            continue
        in_rule_files = in_rule_files and stripped.startswith("- ")
        if stripped == "rule_files:":
            in_rule_files = True
        elif in_rule_files:
            line = f"{indent}- {PROMETHEUS_DIR / stripped[2:].strip()}"
        elif match := re.fullmatch(
            r"(scrape_interval|scrape_timeout|evaluation_interval): \S+", stripped
        ):
            line = f"{indent}{match.group(1)}: {SCRAPE_INTERVAL:.0f}s"
        elif match := re.fullmatch(r"- job_name: (\S+)", stripped):
            job = match.group(1)
            assert job in ports, f"deploy/prometheus/prometheus.yml scrapes {job}, not run here"
        elif stripped.startswith("- targets:"):
            assert job is not None
            line = f'{indent}- targets: ["127.0.0.1:{ports[job]}"]'
        lines.append(line)
    return "\n".join(lines) + "\n"


class Prometheus:
    """A `prometheus` server process and its HTTP API."""

    def __init__(self, binary: str, config: Path, data: Path, log_path: Path) -> None:
        self.port = free_tcp_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={data}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log_tail()}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result: a list of {metric, value} (or {metric, values} for ranges)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def rules(self) -> dict[str, dict[str, Any]]:
        """Every loaded rule by name, as Prometheus parsed it from the rule files."""
        return {
            rule["name"]: rule for group in self.api("rules")["groups"] for rule in group["rules"]
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def latest_samples(result: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """A range query's last (timestamp, value) per series, by the series' partition label."""
    latest = {}
    for series in result:
        timestamp, value = series["values"][-1]
        latest[series["metric"]["partition"]] = (float(timestamp), float(value))
    return latest


def poll(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `condition` held; fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.2)
    return time.monotonic() - started


# -- dashboards -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel}: {self.expr}"


def panel_queries() -> list[PanelQuery]:
    """Every `targets[].expr` of every dashboard, nested rows included, with macros filled in."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        templated = [
            variable["name"] for variable in dashboard.get("templating", {}).get("list", [])
        ]
        assert not templated, f"{path.name}: give the test a value for variables {templated}"
        for panel in walk(dashboard["panels"]):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    expr = fill_variables(target["expr"])
                    queries.append(PanelQuery(path.name, panel["title"], expr))
    assert queries, f"no panel queries in {DASHBOARDS}"
    return queries


def fill_variables(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in GRAFANA_VARIABLES, f"unknown Grafana variable ${name} in {expr}"
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


# -- the pipeline ---------------------------------------------------------------------------------


class Services:
    """One `txguard serve` process per service, each on its own metrics port."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.ports = {service: free_tcp_port() for service in SERVICES}
        self.running: dict[str, ServiceProcess] = {}

    def start(self, service: str) -> ServiceProcess:
        process = start_service(
            service,
            env={**self.env, "TXGUARD_METRICS_PORT": str(self.ports[service])},
            log_dir=self.log_dir,
        )
        self.running[service] = process
        if service == "transactions":
            wait_for_grpc_serving(self.env["TXGUARD_GRPC_ADDR"], process)
        return process

    def stop(self, service: str) -> None:
        process = self.running.pop(service)
        code = process.terminate(timeout=60)
        assert code == 0, f"{service} exited with {code}:\n{process.log_tail(40)}"

    def stop_all(self) -> None:
        # The API first, so that no new work reaches the consumers while they stop.
        for service in [s for s in SERVICES if s in self.running]:
            self.stop(service)


class BackgroundLoad:
    """`generate_load` at a steady rate on a thread of its own, until `stop()`."""

    def __init__(self, target: str, rate_per_second: float) -> None:
        self.stats = LoadStats()
        self._target = target
        self._rate = rate_per_second
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="load")

    def _run(self) -> None:
        try:
            asyncio.run(self._generate())
        except BaseException as exc:
            self._errors.append(exc)
            self._started.set()

    async def _generate(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._started.set()
        await generate_load(
            self._target,
            TransactionFactory(accounts=300, seed=29),
            rate_per_second=self._rate,
            duration_seconds=600,
            stop=self._stop,
            stats=self.stats,
            client_id="prometheus-test",
        )

    def start(self) -> None:
        self._thread.start()
        assert self._started.wait(30), "the load generator did not start"

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the load generator did not stop"
        if self._errors:
            raise self._errors[0]


class UnusualEvents:
    """What steady load alone does not show: a replayed request, an invalid one, an amount the
    amount rule flags, a poison record on the transactions topic, and the watermarks of a fraud
    label feed (labels known until now), without which the terminal table's lag is not a number.
    """

    def __init__(self, target: str, bootstrap: str, topics: TopicNames) -> None:
        self._channel = grpc.insecure_channel(target)
        self._create: Callable[..., Any] = TransactionServiceStub(self._channel).CreateTransaction
        self._producer = make_producer(bootstrap, client_id="prometheus-test-events")
        self._factory = TransactionFactory(accounts=3, seed=31)
        self._topic = topics.transactions
        self._labels = (topics.labels, len(partition_numbers(bootstrap, topics.labels)))

    def send(self) -> None:
        metadata = (("x-client-id", "prometheus-test"),)
        request = self._factory.next_request()
        request.amount_minor = 900_000
        first = self._create(request, metadata=metadata, timeout=10)
        replay = self._create(request, metadata=metadata, timeout=10)
        assert replay.transaction.transaction_id == first.transaction.transaction_id
        invalid = CreateTransactionRequest()
        invalid.CopyFrom(request)
        invalid.idempotency_key = uuid.uuid4().hex
        invalid.amount_minor = 0
        with pytest.raises(grpc.RpcError) as refused:
            self._create(invalid, metadata=metadata, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        self._producer.produce(self._topic, key=b"poison", value=b"not a TransactionCreated")
        for mark in watermark_records([self._labels], now_us(), source="prometheus-test"):
            self._producer.produce(
                mark.topic,
                key=mark.key,
                value=mark.value,
                headers=list(mark.headers),
                partition=mark.partition,
            )
        assert self._producer.flush(30) == 0

    def close(self) -> None:
        self._producer.close()
        self._channel.close()


# -- independent lag measurement ------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionAge:
    """What Kafka says about one partition of a consumer group, independently of txguard."""

    partition: int
    committed: int
    high_watermark: int
    committed_timestamp: float | None  # the record at the committed offset: oldest unprocessed
    previous_timestamp: float | None  # the record before it: the last one processed

    @property
    def behind(self) -> bool:
        return self.committed < self.high_watermark


def partition_ages(bootstrap: str, group: str, topic: str, partitions: int) -> list[PartitionAge]:
    """Committed offset, high watermark, and the timestamps around the committed offset."""
    committed = committed_offsets(bootstrap, group, topic, partitions)
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"prometheus-test-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        highs = {
            partition: reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
            for partition in committed
        }
        # The last processed record and the oldest unprocessed one, where they exist.
        wanted = {
            (partition, offset)
            for partition, committed_offset in committed.items()
            for offset in (committed_offset - 1, committed_offset)
            if 0 <= offset < highs[partition]
        }
        stamps = read_timestamps(reader, topic, wanted)
    finally:
        reader.close()
    return [
        PartitionAge(
            partition,
            offset,
            highs[partition],
            stamps.get((partition, offset)),
            stamps.get((partition, offset - 1)),
        )
        for partition, offset in sorted(committed.items())
    ]


def read_timestamps(
    reader: Consumer, topic: str, wanted: set[tuple[int, int]]
) -> dict[tuple[int, int], float]:
    """Timestamps (seconds) of the records at these (partition, offset) pairs."""
    starts: dict[int, int] = {}
    for partition, offset in wanted:
        starts[partition] = min(offset, starts.get(partition, offset))
    reader.assign([TopicPartition(topic, partition, start) for partition, start in starts.items()])
    stamps: dict[tuple[int, int], float] = {}
    deadline = time.monotonic() + 30
    while len(stamps) < len(wanted):
        assert time.monotonic() < deadline, f"could not read {sorted(wanted - set(stamps))}"
        for message in reader.consume(num_messages=100, timeout=0.5):
            key = (message.partition(), message.offset())
            if message.error() is None and key in wanted:
                stamps[key] = message.timestamp()[1] / 1000.0
    return stamps


def partition_numbers(bootstrap: str, topic: str) -> list[int]:
    with make_admin(bootstrap, client_id="prometheus-test-metadata") as admin:
        return sorted(admin.list_topics(topic, timeout=10).topics[topic].partitions)


def send_decision(bootstrap: str, topic: str) -> None:
    """One decision (for a transaction the store does not hold) on the decisions topic."""
    decision = FraudDecision(
        decision_id=uuid.uuid4().hex,
        event_id=uuid.uuid4().hex,
        transaction_id=uuid.uuid4().hex,
        account_id="acct-prometheus-test",
        score=0.1,
        outcome=Outcome.OUTCOME_APPROVE,
    )
    decision.decided_at.GetCurrentTime()
    decision.accepted_at.GetCurrentTime()
    record = encode_decision(decision)
    producer = make_producer(bootstrap, client_id="prometheus-test-decision")
    producer.produce(topic, key=record.key, value=record.value, headers=list(record.headers))
    assert producer.flush(30) == 0


@contextmanager
def store_write_locked(path: Path) -> Iterator[None]:
    """Hold the store's write lock: its writers (API, relay, applier) wait in SQLite's busy wait."""
    db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


# -- the test -------------------------------------------------------------------------------------


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "prometheus is not installed: `make prometheus-tools` installs Debian's package"
        )
    return binary


@pytest.fixture
def services(
    txguard_env: dict[str, str], tmp_path: Path, kafka_broker: KafkaBroker
) -> Iterator[Services]:
    topics = TopicNames(f"prom-{uuid.uuid4().hex[:10]}")
    env = {**txguard_env, "TXGUARD_TOPIC_NAMESPACE": topics.namespace, "PYTHONUNBUFFERED": "1"}
    # Created once up front rather than by four services racing.
    ensure_topics(kafka_broker.bootstrap, Settings.from_env(env))
    running = Services(env, tmp_path / "logs")
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture
def prometheus(prometheus_binary: str, services: Services, tmp_path: Path) -> Iterator[Prometheus]:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        prometheus_config({f"txguard-{s}": port for s, port in services.ports.items()})
    )
    server = Prometheus(prometheus_binary, config, tmp_path / "tsdb", tmp_path / "prometheus.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_dashboards_and_lag_alert_against_a_real_prometheus(
    prometheus: Prometheus, services: Services, kafka_broker: KafkaBroker
) -> None:
    target = services.env["TXGUARD_GRPC_ADDR"]
    topics = TopicNames(services.env["TXGUARD_TOPIC_NAMESPACE"])
    for service in SERVICES:
        services.start(service)
    load = BackgroundLoad(target, LOAD_PER_SECOND)
    load.start()
    try:
        check_scrape_jobs_and_rules(prometheus)
        events = UnusualEvents(target, kafka_broker.bootstrap, topics)
        try:
            check_every_panel_has_data(prometheus, events)
        finally:
            events.close()
        wait_until_keeping_up(prometheus)
        check_live_lag_of_a_stuck_applier(prometheus, services, kafka_broker.bootstrap, topics)
        wait_until_keeping_up(prometheus)
        check_lag_alert_for_a_stopped_detector(prometheus, services, kafka_broker.bootstrap, topics)
    finally:
        load.stop()
    assert load.stats.accepted > 0
    assert not load.stats.errors, load.stats.errors


def check_scrape_jobs_and_rules(prometheus: Prometheus) -> None:
    """Prometheus scrapes exactly the deployed jobs and loaded the deployed rule file."""
    deployed = re.findall(
        r"^\s*- job_name: (\S+)", (PROMETHEUS_DIR / "prometheus.yml").read_text(), re.MULTILINE
    )

    def scraped_jobs() -> list[str]:
        targets = prometheus.api("targets")["activeTargets"]
        return sorted(target["labels"]["job"] for target in targets if target["health"] == "up")

    poll(lambda: scraped_jobs() == sorted(deployed), timeout=60, what=f"{deployed} scraped")
    groups = prometheus.api("rules")["groups"]
    assert {group["file"] for group in groups} == {str(PROMETHEUS_DIR / "alerts.yml")}


def check_every_panel_has_data(prometheus: Prometheus, events: UnusualEvents) -> None:
    """Each panel query returns a series with a finite value; some must also go above zero.

    The unusual events are sent again every few seconds, so that each one stays inside a rate
    window until its panel has been seen.
    """
    queries = panel_queries()
    rules = prometheus.rules()
    # The hour before the last five minutes: a test of a few minutes has no such history, so the
    # rule's own expression is evaluated without its offset.
    stand_ins = {
        "txguard:decline_ratio:rate1h_before": rules["txguard:decline_ratio:rate1h_before"][
            "query"
        ].replace(" offset 5m", "")
    }
    assert "offset" not in stand_ins["txguard:decline_ratio:rate1h_before"]
    pending = {query.expr: query for query in queries}
    must_rise = {expr for expr in pending if any(metric in expr for metric in MUST_BE_POSITIVE)}
    last: dict[str, list[float]] = {}
    deadline = time.monotonic() + 120
    next_events = 0.0
    while pending and time.monotonic() < deadline:
        if time.monotonic() >= next_events:
            events.send()
            next_events = time.monotonic() + 2.0
        for expr in list(pending):
            last[expr] = values(prometheus.query(stand_ins.get(expr, expr)))
            finite = [value for value in last[expr] if math.isfinite(value)]
            if finite and (expr not in must_rise or max(finite) > 0):
                del pending[expr]
        time.sleep(0.5)
    assert not pending, "panel queries without data:\n" + "\n".join(
        f"{query} -> {last.get(expr)}"
        + "".join(
            f" ({why}: must rise)" for metric, why in MUST_BE_POSITIVE.items() if metric in expr
        )
        for expr, query in pending.items()
    )
    # No retry is provoked (see the module docstring): each consumer's reasons exist, at 0.
    retries = prometheus.query("txguard_retries_total")
    reasons = {(sample["metric"]["service"], sample["metric"]["reason"]) for sample in retries}
    assert {
        ("detector", "produce"),
        ("detector", "commit"),
        ("detector", "consumer_replaced"),
        ("applier", "store_locked"),
        ("applier", "commit"),
        ("applier", "consumer_replaced"),
        ("terminal-risk", "produce_or_commit"),
        ("terminal-risk", "consumer_replaced"),
    } <= reasons


def wait_until_keeping_up(prometheus: Prometheus) -> None:
    def keeping_up() -> bool:
        worst = values(prometheus.query("max(txguard:consumer_lag_seconds:current)"))
        return bool(worst) and worst[0] < 1.0

    poll(keeping_up, timeout=90, what="every consumer less than 1 s behind")


def check_live_lag_of_a_stuck_applier(
    prometheus: Prometheus, services: Services, bootstrap: str, topics: TopicNames
) -> None:
    """The applier's scraped lag equals the age, at the scrape, of its oldest unprocessed record."""
    group = services.env["TXGUARD_APPLIER_GROUP"]
    topic = topics.decisions
    partitions = len(partition_numbers(bootstrap, topic))
    lag = f'txguard_consumer_lag_seconds{{job="txguard-applier",topic="{topic}"}}'

    def scraped_after(moment: float) -> bool:
        samples = latest_samples(prometheus.query(f"{lag}[3s]"))
        return bool(samples) and min(t for t, _ in samples.values()) > moment

    with store_write_locked(Path(services.env["TXGUARD_STORE_PATH"])):
        # A decision arriving now certainly finds the store locked: the pipeline may have
        # applied everything accepted before the lock already.
        send_decision(bootstrap, topic)
        poll(
            lambda: max(values(prometheus.query(lag)), default=0.0) > 2.0,
            timeout=30,
            what="the applier stuck on the locked store, 2 s behind",
        )
        ages = partition_ages(bootstrap, group, topic, partitions)
        read_at = time.time()
        poll(
            lambda: scraped_after(read_at), timeout=10, what="a scrape after the offsets were read"
        )
        scraped = latest_samples(prometheus.query(f"{lag}[3s]"))
        still = committed_offsets(bootstrap, group, topic, partitions)
    assert still == {age.partition: age.committed for age in ages}, "the applier moved on"
    assert any(age.behind for age in ages), ages
    exact = 0
    for age in ages:
        timestamp, reported = scraped[str(age.partition)]
        if not age.behind:
            assert reported == 0, (age, reported)
            continue
        assert age.committed_timestamp is not None and age.previous_timestamp is not None, age
        oldest = timestamp - age.committed_timestamp
        print(
            f"applier stuck, partition {age.partition}: scraped {reported:.3f} s, "
            f"oldest unprocessed record {oldest:.3f} s old at the scrape"
        )
        if abs(reported - oldest) <= SCRAPE_TIMING_ALLOWANCE:
            exact += 1
            continue
        # No record in the stuck batch: the last processed record stands in (an upper bound),
        # or 0 when the records arrived after the loop last read the partition's high watermark.
        stand_in = timestamp - age.previous_timestamp
        assert reported == 0 or abs(reported - stand_in) <= SCRAPE_TIMING_ALLOWANCE, (
            age,
            reported,
            oldest,
        )
    assert exact >= 1, "no partition of the stuck batch reported its oldest record's age"


def check_lag_alert_for_a_stopped_detector(
    prometheus: Prometheus, services: Services, bootstrap: str, topics: TopicNames
) -> None:
    """Stopping the detector makes TxguardConsumerLagHigh's expression true; a restart clears it."""
    group = services.env["TXGUARD_DETECTOR_GROUP"]
    topic = topics.transactions
    partitions = len(partition_numbers(bootstrap, topic))
    expression = prometheus.rules()["TxguardConsumerLagHigh"]["query"]
    threshold_match = re.search(r">\s*([0-9.]+)\s*$", expression)
    assert threshold_match, expression
    threshold = float(threshold_match.group(1))

    def detector_behind() -> bool:
        return any(
            sample["metric"].get("job") == "txguard-detector"
            for sample in prometheus.query(expression)
        )

    def alert_state() -> str | None:
        for alert in prometheus.api("alerts")["alerts"]:
            labels = alert["labels"]
            if labels["alertname"] == "TxguardConsumerLagHigh" and labels["service"] == "detector":
                return str(alert["state"])
        return None

    assert not detector_behind()
    stopped_at = time.monotonic()
    services.stop("detector")
    poll(detector_behind, timeout=threshold + 30, what="the lag alert's expression true")
    became_true = time.monotonic() - stopped_at
    print(f"detector stopped: lag alert expression true after {became_true:.1f} s")
    # It counts from the detector's last poll, just before the stop; rules run every second.
    assert threshold - 2 * SCRAPE_INTERVAL <= became_true <= threshold + 5, became_true
    poll(lambda: alert_state() in ("pending", "firing"), timeout=5, what="the alert pending")

    # The detector stopped cleanly: its committed offsets are exactly what it processed.
    ages = [age for age in partition_ages(bootstrap, group, topic, partitions) if age.behind]
    assert ages, "records arrived for the stopped detector"
    held = latest_samples(
        prometheus.query('txguard:consumer_lag_seconds:current{job="txguard-detector"}[3s]')
    )
    last_reported = {
        sample["metric"]["partition"]: float(sample["value"][1])
        for sample in prometheus.query(
            'last_over_time(txguard_consumer_lag_seconds{job="txguard-detector"}[1h])'
        )
    }
    for age in ages:
        timestamp, value = held[str(age.partition)]
        assert age.committed_timestamp is not None and age.previous_timestamp is not None, age
        oldest = timestamp - age.committed_timestamp
        print(
            f"detector stopped, partition {age.partition}: Prometheus holds {value:.3f} s, "
            f"oldest unprocessed record {oldest:.3f} s old"
        )
        # Upper bound: the lag counts from the last scrape before the stop (one scrape interval),
        # plus what was already reported then, plus the gap to the next record on the partition.
        allowance = (
            last_reported[str(age.partition)]
            + (age.committed_timestamp - age.previous_timestamp)
            + SCRAPE_TIMING_ALLOWANCE
        )
        assert -FETCH_LATENCY_ALLOWANCE <= value - oldest <= SCRAPE_INTERVAL + allowance, (
            age,
            value,
            oldest,
        )

    caught_up_to = {age.partition: age.high_watermark for age in ages}
    restarted_at = time.monotonic()
    services.start("detector")

    def cleared() -> bool:
        if detector_behind():
            return False
        committed = committed_offsets(bootstrap, group, topic, partitions)
        return all(committed.get(p, -1) >= offset for p, offset in caught_up_to.items())

    poll(cleared, timeout=120, what="the lag alert's expression false after the restart")
    print(
        f"detector restarted: expression false again after {time.monotonic() - restarted_at:.1f} s"
    )
    poll(lambda: alert_state() is None, timeout=10, what="the alert resolved")
