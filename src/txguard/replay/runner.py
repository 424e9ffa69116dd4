"""`txguard replay --input FILE --output FILE [--model DIR]`.

The dataset goes through the real pipeline on topics of its own (a fresh namespace): the replay
produces transactions, labels (with their delay) and watermarks, a terminal-risk aggregator and a
detector run as processes, and the decisions (each carrying its features) are collected into the
output file, one row per TRANSACTION_ID. Nothing in the output depends on timing, so the same
input gives the same file.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition
from google.protobuf.message import DecodeError

from txguard.config import Settings, TopicNames
from txguard.demo.processes import ServiceProcess, child_environment, start_service
from txguard.fraud.features import ALL_FEATURES
from txguard.kafka.clients import make_admin, make_consumer, make_producer
from txguard.kafka.consumer_loop import produce_with_backpressure
from txguard.kafka.serde import decode_decision
from txguard.kafka.session import KafkaUnavailable, running_kafka
from txguard.kafka.topics import ensure_topics
from txguard.replay.events import DAY_US, ReplayTopics, replay_records
from txguard.schema.v1.decision_pb2 import Outcome
from txguard.schema.v1.events_pb2 import TransactionCreated
from txguard.simulate.dataset import DatasetError, read_dataset

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("SCORE", "OUTCOME", "MODEL_VERSION", "RULES_VERSION")
_OUTCOME_NAMES = {
    Outcome.OUTCOME_APPROVE: "APPROVE",
    Outcome.OUTCOME_REVIEW: "REVIEW",
    Outcome.OUTCOME_DECLINE: "DECLINE",
}


class ReplayError(RuntimeError):
    """The replay could not finish; the message says why and where the logs are."""


@dataclass(frozen=True)
class ReplayOptions:
    input: Path
    output: Path
    model_dir: Path | None = None
    label_delay_days: float = 7.0
    currency: str = "EUR"
    # A service that decides nothing for this long while work remains is reported stuck.
    stall_timeout_seconds: float = 300.0
    keep_topics: bool = False


@dataclass
class ReplayResult:
    transactions: int
    labels: int
    seconds: float
    output: Path
    log_dir: Path
    model_versions: list[str] = field(default_factory=list)


def run_replay_command(settings: Settings, options: ReplayOptions) -> int:
    # SIGTERM unwinds like Ctrl-C, so the replay's services are stopped and its topics deleted.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    try:
        result = replay(settings, options)
    except (ReplayError, DatasetError, KafkaUnavailable) as exc:
        print(f"txguard replay: {exc}", file=sys.stderr)
        return 1
    print(
        f"replayed {result.transactions} transactions and {result.labels} labels in "
        f"{result.seconds:.1f} s ({result.transactions / max(result.seconds, 1e-9):,.0f} tx/s); "
        f"model {', '.join(result.model_versions) or '-'}; wrote {result.output}"
    )
    return 0


def replay(settings: Settings, options: ReplayOptions) -> ReplayResult:
    dataset = read_dataset(options.input)
    if options.model_dir is not None and not options.model_dir.is_dir():
        raise ReplayError(f"model directory {options.model_dir} does not exist")
    run_id = uuid.uuid4().hex[:12]
    topics = TopicNames(f"txguard-replay-{run_id}")
    replay_settings = _replay_settings(settings, topics, run_id)
    log_dir = settings.home / "replay" / run_id
    with running_kafka(settings) as bootstrap:
        ensure_topics(bootstrap, replay_settings)
        try:
            return _replay_on(bootstrap, replay_settings, options, dataset, log_dir)
        finally:
            if not options.keep_topics:
                _delete_topics(bootstrap, replay_settings)


def _replay_settings(settings: Settings, topics: TopicNames, run_id: str) -> Settings:
    from dataclasses import replace

    return replace(
        settings,
        topics=topics,
        detector_group=f"txguard-replay-{run_id}-detector",
        terminal_risk_group=f"txguard-replay-{run_id}-terminal-risk",
    )


def _replay_on(
    bootstrap: str,
    settings: Settings,
    options: ReplayOptions,
    dataset: pd.DataFrame,
    log_dir: Path,
) -> ReplayResult:
    env = {
        "TXGUARD_HOME": str(settings.home),
        "TXGUARD_KAFKA_BOOTSTRAP": bootstrap,
        "TXGUARD_TOPIC_NAMESPACE": settings.topics.namespace,
        "TXGUARD_DETECTOR_GROUP": settings.detector_group,
        "TXGUARD_TERMINAL_RISK_GROUP": settings.terminal_risk_group,
        # Scores must not depend on speed: wait for the terminal table, however long it takes.
        "TXGUARD_TERMINAL_TABLE_MAX_WAIT_MS": "unbounded",
        # The aggregator runs ahead of the detector: it must not delete entries the detector
        # has yet to read (a replay's topics are deleted afterwards anyway).
        "TXGUARD_TERMINAL_TABLE_RETENTION_DAYS": "unbounded",
        "TXGUARD_DECISION_FEATURES": "true",
        "TXGUARD_METRICS_PORT": "0",
    }
    if options.model_dir is not None:
        env["TXGUARD_MODEL_DIR"] = str(options.model_dir.resolve())
    started = time.monotonic()
    with _services(child_environment(env), log_dir) as services:
        labels = _produce(bootstrap, settings, options, dataset)
        decisions = _collect_decisions(
            bootstrap, settings, dataset, services, options.stall_timeout_seconds, log_dir
        )
    seconds = time.monotonic() - started
    output = _output_frame(dataset, decisions)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    write_replay_output(output, options.output)
    return ReplayResult(
        transactions=len(dataset),
        labels=labels,
        seconds=seconds,
        output=options.output,
        log_dir=log_dir,
        model_versions=sorted(output["MODEL_VERSION"].unique().tolist()),
    )


@contextlib.contextmanager
def _services(env: dict[str, str], log_dir: Path) -> Iterator[list[ServiceProcess]]:
    services = [
        start_service(name, env=env, log_dir=log_dir) for name in ("terminal-risk", "detector")
    ]
    try:
        yield services
    finally:
        for service in services:
            service.terminate()


def _produce(
    bootstrap: str, settings: Settings, options: ReplayOptions, dataset: pd.DataFrame
) -> int:
    """Every slice of events, in event-time order; the number of labels sent."""
    overrides: dict[str, Any] = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
    }
    producer = make_producer(bootstrap, client_id="txguard-replay", **overrides)
    partitions = settings.topic_partitions
    with make_admin(bootstrap) as admin:
        metadata = admin.list_topics(timeout=30).topics
        counts = {
            name: len(metadata[name].partitions)
            for name in (settings.topics.transactions, settings.topics.labels)
        }
    topics = ReplayTopics(
        transactions=settings.topics.transactions,
        labels=settings.topics.labels,
        transactions_partitions=counts.get(settings.topics.transactions, partitions),
        labels_partitions=counts.get(settings.topics.labels, partitions),
    )
    errors: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            errors.append(error)

    labels = 0
    for batch in replay_records(
        dataset,
        topics,
        label_delay_us=int(options.label_delay_days * DAY_US),
        currency=options.currency,
    ):
        for record in batch:
            produce_with_backpressure(producer, record, on_delivery=on_delivery, on_retry=_no_op)
            if record.topic == topics.labels and record.partition == -1:
                labels += 1
        producer.poll(0)
    remaining = producer.flush(120)
    if remaining or errors:
        raise ReplayError(
            f"could not publish the replay: {remaining} undelivered, errors: {errors[:3]}"
        )
    return labels


def _no_op() -> None:
    return None


def _collect_decisions(
    bootstrap: str,
    settings: Settings,
    dataset: pd.DataFrame,
    services: list[ServiceProcess],
    stall_timeout_seconds: float,
    log_dir: Path,
) -> dict[str, tuple[Any, ...]]:
    """First decision per transaction id, read from the decisions topic until all are there."""
    wanted = set(dataset["TRANSACTION_ID"].astype(str))
    decisions: dict[str, tuple[Any, ...]] = {}
    consumer = make_consumer(
        bootstrap,
        group_id=f"{settings.detector_group}-collector",
        client_id="txguard-replay-collector",
    )
    # A transaction the detector dead-lettered gets no decision: it is reported as such.
    topics = (settings.topics.decisions, settings.topics.dead_letters)
    metadata = consumer.list_topics(timeout=30).topics
    consumer.assign(
        [
            TopicPartition(topic, p, OFFSET_BEGINNING)
            for topic in topics
            for p in metadata[topic].partitions
        ]
    )
    progress_at = time.monotonic()
    try:
        while len(decisions) < len(wanted):
            for service in services:
                if not service.alive():
                    raise ReplayError(
                        f"{service.name} exited with code {service.process.returncode}; "
                        f"logs in {log_dir}:\n{service.log_tail()}"
                    )
            messages = consumer.consume(num_messages=10_000, timeout=0.5)
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    continue
                if message.topic() == settings.topics.dead_letters:
                    dead = _dead_lettered_id(message.value())
                    if dead in wanted and dead not in decisions:
                        decisions[dead] = _DEAD_LETTERED
                        progress_at = time.monotonic()
                    continue
                headers = cast(Any, message.headers())
                decision = decode_decision(message.value(), headers)
                if decision.transaction_id in decisions or decision.transaction_id not in wanted:
                    continue
                features = decision.features
                decisions[decision.transaction_id] = (
                    *(features.get(name, float("nan")) for name in ALL_FEATURES),
                    decision.score,
                    _OUTCOME_NAMES.get(decision.outcome, "UNSPECIFIED"),
                    decision.model_version,
                    decision.rules_version,
                )
                progress_at = time.monotonic()
            if time.monotonic() - progress_at > stall_timeout_seconds:
                raise ReplayError(
                    f"no decision for {stall_timeout_seconds:.0f} s with "
                    f"{len(wanted) - len(decisions)} transactions undecided; logs in {log_dir}"
                )
    finally:
        consumer.close()
    return decisions


_DEAD_LETTERED = (*(float("nan") for _ in ALL_FEATURES), float("nan"), "DEAD_LETTERED", "", "")


def _dead_lettered_id(value: bytes | None) -> str | None:
    try:
        return TransactionCreated.FromString(value or b"").transaction.transaction_id or None
    except DecodeError:
        return None


def _output_frame(dataset: pd.DataFrame, decisions: dict[str, tuple[Any, ...]]) -> pd.DataFrame:
    keep = [
        c
        for c in ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_FRAUD")
        if c in dataset.columns
    ]
    frame = dataset[keep].reset_index(drop=True)
    ids = frame["TRANSACTION_ID"].astype(str)
    values = pd.DataFrame([decisions[i] for i in ids], columns=[*ALL_FEATURES, *OUTPUT_COLUMNS])
    out = pd.concat([frame, values], axis=1)
    return out.sort_values("TRANSACTION_ID", kind="stable").reset_index(drop=True)


def write_replay_output(frame: pd.DataFrame, path: Path) -> None:
    """CSV or Parquet by suffix, like the input."""
    if path.suffix.lower() == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False, float_format="%.17g", date_format="%Y-%m-%d %H:%M:%S")
    else:
        raise ReplayError(f"output must end in .csv or .parquet, got {path.name}")


def _delete_topics(bootstrap: str, settings: Settings) -> None:
    from txguard.kafka.topics import topic_specs

    names = [spec.name for spec in topic_specs(settings)]
    with make_admin(bootstrap) as admin:
        futures = admin.delete_topics(names, operation_timeout=30)
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                log.warning("could not delete replay topic %s: %s", name, exc)
