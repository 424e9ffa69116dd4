"""The benchmark's input: simulated transactions with labels, pre-filled into a fresh topic
namespace, with the terminal-risk table built by the real aggregator, and the model artifact
that every detector (txguard's and the peer) scores with."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message

from txguard.bench.kafka_io import BenchKafkaError, group_lag, partition_count
from txguard.bench.machine import UsageMeter
from txguard.config import Settings, TopicNames
from txguard.demo.processes import ServiceProcess, start_service
from txguard.fraud.features import HANDBOOK_FEATURES
from txguard.kafka.clients import make_producer
from txguard.kafka.consumer_loop import produce_with_backpressure
from txguard.kafka.topics import ensure_topics
from txguard.replay.events import DAY_US, ReplayTopics, replay_records
from txguard.simulate.handbook import SimulationConfig, simulate

log = logging.getLogger(__name__)

LABEL_DELAY_DAYS = 7
# Settings a developer's shell may carry into child processes; every other TXGUARD_* is set here.
_INHERITED = ("TXGUARD_KAFKA_LIBS", "TXGUARD_LOG_LEVEL")


class BenchError(RuntimeError):
    """A scenario could not run to its end; the message says why and where the logs are."""


def namespaced(settings: Settings, namespace: str) -> Settings:
    """Settings whose topics and consumer groups live in `namespace` only."""
    return replace(
        settings,
        topics=TopicNames(namespace),
        detector_group=f"{namespace}-detector",
        applier_group=f"{namespace}-applier",
        terminal_risk_group=f"{namespace}-terminal-risk",
    )


def service_env(bootstrap: str, settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `txguard serve` child: this namespace, JSON logs, no metrics port."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TXGUARD_") or key in _INHERITED
    }
    env.update(
        {
            "TXGUARD_HOME": str(settings.home),
            "TXGUARD_KAFKA_BOOTSTRAP": bootstrap,
            "TXGUARD_TOPIC_NAMESPACE": settings.topics.namespace,
            "TXGUARD_TOPIC_PARTITIONS": str(settings.topic_partitions),
            "TXGUARD_DETECTOR_GROUP": settings.detector_group,
            "TXGUARD_APPLIER_GROUP": settings.applier_group,
            "TXGUARD_TERMINAL_RISK_GROUP": settings.terminal_risk_group,
            "TXGUARD_LOG_FORMAT": "json",
            "TXGUARD_METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def train_bench_model(directory: Path, *, seed: int = 3) -> Path:
    """A logistic-regression artifact on the handbook features of a small simulation: both the
    detector and the peer score with it (its quality does not matter here, its cost does)."""
    from txguard.fraud.models.offline import with_reference_features
    from txguard.fraud.models.training import train_models

    config = SimulationConfig(customers=300, terminals=600, days=60, seed=seed)
    frame = with_reference_features(simulate(config), HANDBOOK_FEATURES)
    train_start = config.start_date + timedelta(days=30)
    written = train_models(
        frame,
        train_start=train_start,
        train_end=train_start + timedelta(days=13),
        kinds=["logistic_regression"],
        feature_names=HANDBOOK_FEATURES,
        output=directory,
        seed=seed,
    )
    return written["logistic_regression"]


def dataset_config(customers: int, days: int) -> SimulationConfig:
    """The handbook's simulator, scaled: about 1.93 transactions per customer and day."""
    return SimulationConfig(
        customers=customers, terminals=2 * customers, days=days, start_date=date(2018, 4, 1)
    )


@dataclass(frozen=True)
class Prefill:
    """A transactions topic filled with a simulation, and the complete terminal table."""

    settings: Settings
    transactions: int
    labels: int
    accounts: int
    produce_seconds: float
    aggregator_seconds: float
    aggregator_usage: dict[str, dict[str, float]]

    def describe(self) -> dict[str, Any]:
        return {
            "namespace": self.settings.topics.namespace,
            "transactions": self.transactions,
            "labels": self.labels,
            "accounts": self.accounts,
            "partitions": self.settings.topic_partitions,
            "produce_seconds": round(self.produce_seconds, 2),
            "terminal_risk_seconds": round(self.aggregator_seconds, 2),
            "terminal_risk_usage": self.aggregator_usage,
        }


def prefill(
    bootstrap: str,
    settings: Settings,
    config: SimulationConfig,
    log_dir: Path,
    *,
    timeout_seconds: float,
) -> Prefill:
    """Simulate, produce every transaction, label and watermark, then run the terminal-risk
    aggregator until both its stages have committed everything (the table is complete)."""
    dataset = simulate(config)
    ensure_topics(bootstrap, settings)
    started = time.monotonic()
    labels = _produce(bootstrap, settings, dataset)
    produced = time.monotonic() - started
    # The whole table is built before any detector starts at the first transaction: nothing may
    # be deleted for being far behind the table's watermark.
    env = service_env(bootstrap, settings, TXGUARD_TERMINAL_TABLE_RETENTION_DAYS="unbounded")
    aggregator = start_service("terminal-risk", env=env, log_dir=log_dir)
    meter = UsageMeter({"terminal-risk": aggregator.process.pid})
    meter.start()
    started = time.monotonic()
    try:
        _wait_for_table(bootstrap, settings, aggregator, timeout_seconds)
        seconds = time.monotonic() - started
        usage = meter.stop(seconds)
    finally:
        aggregator.terminate()
    return Prefill(
        settings=settings,
        transactions=len(dataset),
        labels=labels,
        accounts=int(dataset["CUSTOMER_ID"].nunique()),
        produce_seconds=produced,
        aggregator_seconds=seconds,
        aggregator_usage=usage,
    )


def _produce(bootstrap: str, settings: Settings, dataset: Any) -> int:
    topics = ReplayTopics(
        transactions=settings.topics.transactions,
        labels=settings.topics.labels,
        transactions_partitions=partition_count(bootstrap, settings.topics.transactions),
        labels_partitions=partition_count(bootstrap, settings.topics.labels),
    )
    overrides: dict[str, Any] = {"linger.ms": 20, "batch.size": 1_000_000}
    producer = make_producer(bootstrap, client_id="txguard-bench-prefill", **overrides)
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            errors.append(error)

    labels = 0
    for batch in replay_records(dataset, topics, label_delay_us=LABEL_DELAY_DAYS * DAY_US):
        for record in batch:
            produce_with_backpressure(producer, record, on_delivery=delivered, on_retry=_no_op)
            if record.topic == topics.labels and record.partition == -1:
                labels += 1
        producer.poll(0)
    remaining = producer.flush(300)
    if remaining or errors:
        raise BenchKafkaError(f"pre-fill not delivered: {remaining} queued, errors {errors[:3]}")
    return labels


def _no_op() -> None:
    return None


def _wait_for_table(
    bootstrap: str, settings: Settings, aggregator: ServiceProcess, timeout_seconds: float
) -> None:
    topics = settings.topics
    rekey = f"{settings.terminal_risk_group}.rekey"
    table = f"{settings.terminal_risk_group}.table"
    deadline = time.monotonic() + timeout_seconds
    while True:
        if not aggregator.alive():
            raise BenchError(f"the terminal-risk aggregator exited:\n{aggregator.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(
                f"terminal table not complete after {timeout_seconds:.0f} s; "
                f"log {aggregator.log_path}"
            )
        # Stage 2 is done only once stage 1 is done and stage 2 has caught up after it.
        if group_lag(bootstrap, rekey, [topics.transactions, topics.labels]) == 0:
            if group_lag(bootstrap, table, [topics.terminal_events]) == 0:
                return
        time.sleep(1.0)
