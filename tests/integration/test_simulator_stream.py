"""`txguard simulate --stream` against a real transaction service process and the session broker.

Each test runs its own transaction service (with its outbox relay) and store, and a topic namespace
of its own: everything on its labels topic is the test's, and its transactions are recognised on
Kafka by the ids its store gave them.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from tests.e2e.harness import Pipeline, TopicRecord, open_store_readonly, read_topic
from tests.support import delete_namespace_topics, wait_until
from txguard.config import TRANSACTIONS_TOPIC, Settings
from txguard.kafka.serde import (
    decode_fraud_label,
    decode_stream_watermark,
    is_stream_watermark,
)
from txguard.kafka.topics import existing_partition_counts
from txguard.replay.events import DAY_US, HOUR_US
from txguard.schema.v1.events_pb2 import TransactionCreated
from txguard.schema.v1.labels_pb2 import FraudLabel
from txguard.schema.v1.transaction_pb2 import Transaction
from txguard.simulate.dataset import amount_minor
from txguard.simulate.handbook import SimulationConfig, simulate
from txguard.simulate.stream import (
    CLIENT_ID,
    SIMULATOR_SOURCE,
    StreamOptions,
    customer_card_number,
    idempotency_key,
    run_stream,
)

pytestmark = pytest.mark.integration

# About 380 transactions and 26 frauds over four days; radius 10 gives every customer terminals.
CONFIG = SimulationConfig(customers=50, terminals=100, days=4, radius=10.0, seed=3)
LABEL_DELAY_DAYS = 1.0
DELAY_US = round(LABEL_DELAY_DAYS * DAY_US)
RATE = 300.0


@pytest.fixture
def stream_env(txguard_env: dict[str, str]) -> dict[str, str]:
    env = dict(txguard_env)
    env["TXGUARD_TOPIC_NAMESPACE"] = f"txguard-simstream-{uuid.uuid4().hex[:12]}"
    return env


@pytest.fixture
def api(stream_env: dict[str, str], tmp_path: Path) -> Iterator[Pipeline]:
    """The transaction service (API + outbox relay) as a process; its topics deleted after."""
    pipeline = Pipeline(stream_env, tmp_path / "logs")
    pipeline.start("transactions")
    try:
        yield pipeline
    finally:
        codes = pipeline.stop_all()
        delete_namespace_topics(Settings.from_env(stream_env))
    assert codes == {"transactions": 0}, pipeline.logs()[-5000:]


@dataclass(frozen=True)
class Simulated:
    customer: int
    terminal: int
    amount_minor: int
    time_us: int
    fraud: bool


@pytest.fixture(scope="module")
def expected() -> dict[str, Simulated]:
    """The simulated transactions the API accepts, by idempotency key."""
    frame = simulate(CONFIG)
    amounts = amount_minor(frame["TX_AMOUNT"])
    times = frame["TX_DATETIME"].to_numpy(dtype="datetime64[us]").astype(np.int64)
    found = {
        idempotency_key(CONFIG, int(tid)): Simulated(int(c), int(t), int(a), int(us), f == 1)
        for tid, c, t, a, us, f in zip(
            frame["TRANSACTION_ID"],
            frame["CUSTOMER_ID"],
            frame["TERMINAL_ID"],
            amounts,
            times,
            frame["TX_FRAUD"],
            strict=True,
        )
        if a > 0
    }
    assert len(found) > 300 and sum(tx.fraud for tx in found.values()) > 10
    return found


def options(rate: float = RATE) -> StreamOptions:
    return StreamOptions(rate_per_second=rate, label_delay_days=LABEL_DELAY_DAYS, config=CONFIG)


def stored_by_key(store_path: Path) -> dict[str, list[Transaction]]:
    with open_store_readonly(store_path) as db:
        rows = db.execute("SELECT idempotency_key, record FROM transactions").fetchall()
    found: dict[str, list[Transaction]] = defaultdict(list)
    for key, record in rows:
        found[key].append(Transaction.FromString(record))
    return found


def stored_count(store_path: Path) -> int:
    with open_store_readonly(store_path) as db:
        count: int = db.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]
    return count


def split_labels_topic(
    records: list[TopicRecord],
) -> tuple[list[tuple[TopicRecord, FraudLabel]], dict[int, list[int]]]:
    """Labels in topic order, and the watermarks' complete_until (µs) per partition, in order."""
    labels: list[tuple[TopicRecord, FraudLabel]] = []
    watermarks: dict[int, list[int]] = defaultdict(list)
    for record in records:
        if is_stream_watermark(record.headers):
            mark = decode_stream_watermark(record.value, record.headers)
            assert mark.source == SIMULATOR_SOURCE
            watermarks[record.partition].append(mark.complete_until.ToMicroseconds())
        else:
            labels.append((record, decode_fraud_label(record.value, record.headers)))
    return labels, watermarks


def assert_stored_exactly_once(store_path: Path, expected: dict[str, Simulated]) -> dict[str, str]:
    """Every expected transaction stored once, as simulated; returns key -> stored id."""
    stored = stored_by_key(store_path)
    assert set(stored) == set(expected)
    assert all(len(copies) == 1 for copies in stored.values())
    tokens: dict[int, set[str]] = defaultdict(set)
    for key, (tx,) in stored.items():
        simulated = expected[key]
        card = customer_card_number(CONFIG.seed, simulated.customer)
        assert tx.client_id == CLIENT_ID
        assert tx.account_id == f"customer-{simulated.customer}"
        assert tx.terminal_id == f"terminal-{simulated.terminal}"
        assert (tx.amount_minor, tx.currency) == (simulated.amount_minor, "EUR")
        assert tx.occurred_at.ToMicroseconds() == simulated.time_us
        assert (tx.card_bin, tx.card_last4) == (card[:6], card[-4:])
        tokens[simulated.customer].add(tx.card_token)
    # One stable card per customer, and no two customers share one.
    assert all(len(found) == 1 for found in tokens.values())
    assert len({next(iter(found)) for found in tokens.values()}) == len(tokens)
    return {key: copies[0].transaction_id for key, copies in stored.items()}


def assert_label_matches(label: FraudLabel, simulated: Simulated) -> None:
    assert label.label_id == f"label-{label.transaction_id}"
    assert label.account_id == f"customer-{simulated.customer}"
    assert label.terminal_id == f"terminal-{simulated.terminal}"
    assert label.occurred_at.ToMicroseconds() == simulated.time_us
    assert label.known_at.ToMicroseconds() == simulated.time_us + DELAY_US
    assert label.fraud and label.source == SIMULATOR_SOURCE


def test_stream_stores_every_transaction_once_and_labels_every_fraud_after_its_delay(
    api: Pipeline,
    stream_env: dict[str, str],
    expected: dict[str, Simulated],
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings.from_env(stream_env)
    bootstrap = stream_env["TXGUARD_KAFKA_BOOTSTRAP"]
    started = time.monotonic()
    assert run_stream(settings, options()) == 0
    elapsed = time.monotonic() - started
    summary = capsys.readouterr().out
    assert "stream completed" in summary
    assert f"{len(expected):,} accepted" in summary
    # The rate is a limit: transaction k never leaves before k / rate seconds.
    assert elapsed >= (len(expected) - 1) / RATE

    stored_ids = assert_stored_exactly_once(settings.store_path, expected)

    records = read_topic(bootstrap, settings.topics.labels)
    labels, watermarks = split_labels_topic(records)
    assert_every_fraud_labelled(labels, expected, stored_ids, copies=1)

    # One watermark per hour of event time on every partition, from the first transaction's
    # hour to the last label's, each the hour's last microsecond.
    times = [tx.time_us for tx in expected.values()]
    first_hour = min(times) // HOUR_US * HOUR_US
    last = max(max(times), max(tx.time_us for tx in expected.values() if tx.fraud) + DELAY_US)
    hours = [start + HOUR_US - 1 for start in range(first_hour, last + 1, HOUR_US)]
    partitions = existing_partition_counts(bootstrap)[settings.topics.labels]
    assert sorted(watermarks) == list(range(partitions))
    assert all(marks == hours for marks in watermarks.values())
    # Every partition keeps the promise: no label follows a watermark that covers its known_at.
    covered: dict[int, int] = defaultdict(lambda: -1)
    label_at = {(record.partition, record.offset): label for record, label in labels}
    for record in records:
        label = label_at.get((record.partition, record.offset))
        if label is None:
            covered[record.partition] = watermarks_until(record)
        else:
            assert label.known_at.ToMicroseconds() > covered[record.partition]

    # The relay published every transaction; no card number is stored or published, while the
    # same searches do find the account ids.
    ours = set(stored_ids.values())
    wait_until(lambda: len(published_transactions(bootstrap, settings, ours)) >= len(ours))
    published = published_transactions(bootstrap, settings, ours)
    assert {event.transaction.transaction_id for _, event in published} == ours
    labels_topic = read_topic(bootstrap, settings.topics.labels)
    kafka_bytes = b"".join(
        (r.key or b"") + (r.value or b"") + b"".join(value for _, value in r.headers)
        for r in [*(record for record, _ in published), *labels_topic]
    )
    assert_no_card_numbers(kafka_bytes, "Kafka")
    assert_no_card_numbers(store_bytes(settings.store_path), "the store")


def published_transactions(
    bootstrap: str, settings: Settings, transaction_ids: set[str]
) -> list[tuple[TopicRecord, TransactionCreated]]:
    """This test's TransactionCreated records, wherever the relay put them.

    The outbox names the default transactions topic whatever the namespace, so both are read.
    """
    found = []
    for topic in {settings.topics.transactions, TRANSACTIONS_TOPIC}:
        for record in read_topic(bootstrap, topic):
            try:
                event = TransactionCreated.FromString(record.value or b"")
            except DecodeError:
                continue
            if event.transaction.transaction_id in transaction_ids:
                found.append((record, event))
    return found


def assert_every_fraud_labelled(
    labels: list[tuple[TopicRecord, FraudLabel]],
    expected: dict[str, Simulated],
    stored_ids: dict[str, str],
    *,
    copies: int | None,
) -> None:
    """Each fraud has `copies` labels (None: at least one), all naming its stored transaction."""
    frauds = {stored_ids[key]: tx for key, tx in expected.items() if tx.fraud}
    counts = Counter(label.transaction_id for _, label in labels)
    assert set(counts) == set(frauds)
    if copies is not None:
        assert set(counts.values()) == {copies}
    for record, label in labels:
        assert_label_matches(label, frauds[label.transaction_id])
        assert record.key == label.account_id.encode()


def watermarks_until(record: TopicRecord) -> int:
    mark = decode_stream_watermark(record.value, record.headers)
    return int(mark.complete_until.ToMicroseconds())


def store_bytes(store_path: Path) -> bytes:
    files = [p for p in store_path.parent.iterdir() if p.name.startswith(store_path.name)]
    return b"".join(p.read_bytes() for p in files)


def assert_no_card_numbers(data: bytes, where: str) -> None:
    assert b"customer-" in data, f"the search cannot see stored text in {where}"
    cards = {customer_card_number(CONFIG.seed, c) for c in range(CONFIG.customers)}
    leaked = sorted(card for card in cards if card.encode() in data)
    assert not leaked, f"{len(leaked)} card numbers found in {where}"


def test_interrupted_stream_stops_cleanly_and_a_restart_stores_nothing_twice(
    api: Pipeline,
    stream_env: dict[str, str],
    expected: dict[str, Simulated],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings.from_env(stream_env)
    bootstrap = stream_env["TXGUARD_KAFKA_BOOTSTRAP"]
    script = (
        "import sys\n"
        "import datetime\n"
        "from txguard.config import Settings\n"
        "from txguard.simulate.handbook import SimulationConfig\n"
        "from txguard.simulate.stream import StreamOptions, run_stream\n"
        f"config = {CONFIG!r}\n"
        "sys.exit(run_stream(Settings.from_env(), StreamOptions(\n"
        f"    rate_per_second=100.0, label_delay_days={LABEL_DELAY_DAYS!r}, config=config)))\n"
    )
    output = tmp_path / "stream.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", script],
            env=stream_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: process.poll() is not None or stored_count(settings.store_path) >= 40
            )
            assert process.poll() is None, output.read_text()
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = output.read_text()
    assert code == 0, text
    assert "stream stopped" in text, text
    interrupted_at = stored_count(settings.store_path)
    assert interrupted_at < len(expected), "the stream was stopped before its end"
    stored = stored_by_key(settings.store_path)
    assert set(stored) <= set(expected)
    assert all(len(copies) == 1 for copies in stored.values())
    # Only transactions the API stored got labels.
    stored_ids = {copies[0].transaction_id for copies in stored.values()}
    labels, _ = split_labels_topic(read_topic(bootstrap, settings.topics.labels))
    assert {label.transaction_id for _, label in labels} <= stored_ids

    # A restart with a duration re-sends the same keys, then stops after about 100 more.
    limited = dataclasses.replace(options(rate=100.0), duration_seconds=1.5)
    assert run_stream(settings, limited) == 0
    assert "stream reached its duration" in capsys.readouterr().out
    assert interrupted_at < stored_count(settings.store_path) < len(expected)

    # The full restart: the API answers the keys it has from its records, and a label sent
    # again is the same label (the aggregator keeps one per transaction).
    assert run_stream(settings, options()) == 0
    stored_ids_by_key = assert_stored_exactly_once(settings.store_path, expected)
    labels, watermarks = split_labels_topic(read_topic(bootstrap, settings.topics.labels))
    assert_every_fraud_labelled(labels, expected, stored_ids_by_key, copies=None)
    assert len(watermarks) == existing_partition_counts(bootstrap)[settings.topics.labels]


def test_a_period_in_the_future_is_refused_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env({"TXGUARD_HOME": str(tmp_path)})
    future = SimulationConfig(
        customers=5, terminals=10, days=3, radius=30.0, start_date=date.today() + timedelta(days=2)
    )
    code = run_stream(settings, StreamOptions(rate_per_second=10, config=future))
    assert code == 2
    error = capsys.readouterr().err
    assert "in the future" in error and "--start-date" in error


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rate_per_second", 0),
        ("rate_per_second", float("inf")),
        ("duration_seconds", -1.0),
        ("label_delay_days", -0.5),
        ("speedup", 0.0),
        ("slice_seconds", 0),
        ("max_in_flight", True),
    ],
)
def test_invalid_options_name_the_field(field: str, value: object) -> None:
    arguments: dict[str, object] = {"rate_per_second": 10.0, field: value}
    with pytest.raises(ValueError, match=field):
        StreamOptions(**arguments)  # type: ignore[arg-type]
