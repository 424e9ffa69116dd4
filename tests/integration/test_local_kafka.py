"""The local Kafka broker and the client factories against a real broker.

Tests marked `integration` use the session broker; the others check the prerequisite handling
(missing or old Java) through the real CLI without starting any broker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from txguard.config import TRANSACTIONS_TOPIC, TopicNames
from txguard.kafka.broker import (
    STATE_FILE,
    KafkaFetchError,
    KafkaSetupError,
    fetch_kafka_libs,
    parse_java_version,
)
from txguard.kafka.clients import make_consumer, make_producer
from txguard.kafka.topics import existing_partition_counts

if TYPE_CHECKING:
    from tests.conftest import KafkaBroker

CLI_TIMEOUT = 240

# The state changelog of the default detector group.
DEFAULT_STATE_TOPIC = TopicNames().detector_state("txguard-detector")


def _produce_one(producer: Producer, topic: str, key: bytes, value: bytes) -> tuple[int, int]:
    """Produce one record and wait for its delivery report; returns (partition, offset)."""
    reports: list[tuple[KafkaError | None, Message]] = []
    producer.produce(topic, key=key, value=value, on_delivery=lambda e, m: reports.append((e, m)))
    assert producer.flush(60) == 0, "record not delivered within 60 s"
    assert len(reports) == 1
    error, message = reports[0]
    assert error is None, error
    partition, offset = message.partition(), message.offset()
    assert partition is not None and offset is not None and offset >= 0
    return partition, offset


def _read_at(bootstrap: str, topic: str, partition: int, offset: int) -> Message:
    """The record at topic/partition/offset, read with a fresh consumer in a unique group."""
    consumer: Consumer = make_consumer(
        bootstrap, group_id=f"test-read-{uuid.uuid4().hex}", client_id="test-reader"
    )
    try:
        # assign, not subscribe: read exactly our own record, whatever else the shared topic holds.
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for message in consumer.consume(num_messages=10, timeout=1.0):
                if message.error() is not None:
                    raise AssertionError(f"consume error: {message.error()}")
                if message.offset() == offset:
                    return message
        raise AssertionError(f"no record at {topic}[{partition}]@{offset} within 60 s")
    finally:
        consumer.close()


@pytest.mark.integration
def test_produce_and_consume_through_the_factories(kafka_broker: KafkaBroker) -> None:
    key, value = uuid.uuid4().hex.encode(), uuid.uuid4().bytes
    producer = make_producer(kafka_broker.bootstrap, client_id="test-producer")
    try:
        partition, offset = _produce_one(producer, TRANSACTIONS_TOPIC, key, value)
    finally:
        producer.close()
    message = _read_at(kafka_broker.bootstrap, TRANSACTIONS_TOPIC, partition, offset)
    assert (message.key(), message.value()) == (key, value)


@pytest.mark.integration
def test_subscribing_consumer_group_receives_the_record(kafka_broker: KafkaBroker) -> None:
    key = uuid.uuid4().hex.encode()
    producer = make_producer(kafka_broker.bootstrap, client_id="test-producer")
    try:
        _produce_one(producer, TRANSACTIONS_TOPIC, key, b"subscribed")
    finally:
        producer.close()
    consumer = make_consumer(
        kafka_broker.bootstrap, group_id=f"test-group-{uuid.uuid4().hex}", client_id="test"
    )
    try:
        consumer.subscribe([TRANSACTIONS_TOPIC])
        deadline = time.monotonic() + 90
        found = None
        while found is None and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=500, timeout=1.0):
                assert message.error() is None, message.error()
                if message.key() == key:  # The topic is shared: skip other tests' records.
                    found = message
        assert found is not None, "own record not received through the consumer group"
        consumer.store_offsets(message=found)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()


@pytest.mark.integration
def test_state_changelog_matches_transactions_partitions(kafka_broker: KafkaBroker) -> None:
    counts = existing_partition_counts(kafka_broker.bootstrap)
    assert counts[DEFAULT_STATE_TOPIC] == counts[TRANSACTIONS_TOPIC]


@pytest.mark.integration
@pytest.mark.parametrize("how", ["stop", "kill"])
def test_restart_keeps_data_and_address(
    kafka_broker: KafkaBroker, how: str, capfd: pytest.CaptureFixture[str]
) -> None:
    if not kafka_broker.is_local:
        pytest.skip("restarts the broker; not possible on an external cluster")
    before = kafka_broker.bootstrap
    producer = make_producer(before, client_id="test-restart")
    try:
        first = _produce_one(producer, TRANSACTIONS_TOPIC, b"restart-1", uuid.uuid4().bytes)
        if how == "stop":
            kafka_broker.stop()
        else:
            kafka_broker.kill()
        kafka_broker.start()
        assert kafka_broker.bootstrap == before
        # The same idempotent producer reconnects and delivers after the restart.
        second = _produce_one(producer, TRANSACTIONS_TOPIC, b"restart-2", uuid.uuid4().bytes)
    finally:
        producer.close()
    assert _read_at(before, TRANSACTIONS_TOPIC, *first).key() == b"restart-1"
    assert _read_at(before, TRANSACTIONS_TOPIC, *second).key() == b"restart-2"
    # librdkafka's connection errors during the outage went to Python logging, not raw stderr.
    assert "rdkafka" not in capfd.readouterr().err


def _cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXGUARD_")}
    env.update({k: v for k, v in os.environ.items() if k == "TXGUARD_KAFKA_LIBS"})
    env["TXGUARD_HOME"] = str(home)
    env.update(extra)
    return env


def _txguard(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "txguard", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


@pytest.mark.integration
def test_cli_up_status_down(tmp_path: Path, kafka_broker: KafkaBroker) -> None:
    if not kafka_broker.is_local:
        pytest.skip("starts a second local broker; not run against an external cluster")
    env = _cli_env(tmp_path / "home", TXGUARD_TOPIC_PARTITIONS="3")
    state_file = tmp_path / "home" / "kafka" / STATE_FILE
    try:
        up = _txguard(env, "kafka", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads(state_file.read_text())
        assert state["bootstrap"] in up.stdout
        assert "created topics" in up.stdout

        status = _txguard(env, "kafka", "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"pid {state['pid']}" in status.stdout
        assert f"{TRANSACTIONS_TOPIC}" in status.stdout and "3 partitions" in status.stdout

        again = _txguard(env, "kafka", "up")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already running" in again.stdout
        assert "all txguard topics exist" in again.stdout

        down = _txguard(env, "kafka", "down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert "stopped" in down.stdout
        assert json.loads(state_file.read_text())["pid"] is None

        stopped = _txguard(env, "kafka", "status")
        assert stopped.returncode == 1
        assert "not running" in stopped.stdout

        second_down = _txguard(env, "kafka", "down")
        assert second_down.returncode == 0
        assert "not running" in second_down.stdout
        for result in (up, status, again, down, stopped, second_down):
            assert "Traceback" not in result.stderr
    finally:
        _txguard(env, "kafka", "down")
        _kill_recorded_broker(state_file)


def _kill_recorded_broker(state_file: Path) -> None:
    """Last resort if `down` failed: SIGKILL the pid this test's broker recorded, if still alive."""
    try:
        pid = json.loads(state_file.read_text()).get("pid")
    except (OSError, ValueError):
        return
    if pid:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if str(state_file.parent).encode() in cmdline:
            os.kill(pid, signal.SIGKILL)


def test_missing_java_exits_3_with_message(tmp_path: Path) -> None:
    env = _cli_env(tmp_path / "home", PATH=str(tmp_path / "empty-bin"))
    env.pop("JAVA_HOME", None)
    result = _txguard(env, "kafka", "up")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Java 17+ is required" in result.stderr
    assert "TXGUARD_KAFKA_BOOTSTRAP" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "home" / "kafka").exists()


def test_old_java_exits_3_with_message(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_java = bin_dir / "java"
    fake_java.write_text("#!/bin/sh\necho 'java version \"1.8.0_381\"' >&2\n")
    fake_java.chmod(0o755)
    env = _cli_env(tmp_path / "home", PATH=str(bin_dir))
    env.pop("JAVA_HOME", None)
    for action in ("up", "fetch"):
        result = _txguard(env, "kafka", action)
        assert result.returncode == 3, result.stdout + result.stderr
        assert "Java 17+ is required" in result.stderr and "Java 8" in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_381"', 8),
        ('openjdk version "11.0.2" 2019-01-15', 11),
        ("no version here", None),
    ],
)
def test_parse_java_version(output: str, major: int | None) -> None:
    assert parse_java_version(output) == major


_FAKE_JAVA = "#!/bin/sh\necho 'openjdk version \"17.0.15\" 2025-04-15' >&2\n"
# Stands in for Maven: writes the two jars the fetch checks for, then exits with $FAKE_MVN_EXIT.
_FAKE_MVN = """#!/bin/sh
echo run >> "$FAKE_MVN_CALLS"
for arg in "$@"; do
  case "$arg" in -DoutputDirectory=*) out="${arg#-DoutputDirectory=}" ;; esac
done
touch "$out/kafka_2.13-4.1.1.jar" "$out/log4j-slf4j-impl-2.24.3.jar"
exit "${FAKE_MVN_EXIT:-0}"
"""


@pytest.fixture
def fake_toolchain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("java", _FAKE_JAVA), ("mvn", _FAKE_MVN)):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "mvn-calls"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("FAKE_MVN_CALLS", str(calls))
    return calls


def test_fetch_is_atomic_and_runs_maven_once(tmp_path: Path, fake_toolchain: Path) -> None:
    libs = tmp_path / "cache" / "libs"
    assert fetch_kafka_libs(libs) == libs
    assert (libs / "kafka_2.13-4.1.1.jar").is_file()
    assert fetch_kafka_libs(libs) == libs
    assert fake_toolchain.read_text().count("run") == 1
    assert sorted(p.name for p in libs.parent.iterdir()) == ["libs"]  # no staging leftovers


def test_failed_fetch_leaves_no_half_cache(
    tmp_path: Path, fake_toolchain: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MVN_EXIT", "1")
    libs = tmp_path / "cache" / "libs"
    with pytest.raises(KafkaFetchError, match="exit 1"):
        fetch_kafka_libs(libs)
    assert list(libs.parent.iterdir()) == []


def test_fetch_never_deletes_a_foreign_folder(tmp_path: Path, fake_toolchain: Path) -> None:
    libs = tmp_path / "my-folder"
    libs.mkdir()
    (libs / "notes.txt").write_text("keep")
    with pytest.raises(KafkaSetupError, match="holds no Kafka jars"):
        fetch_kafka_libs(libs)
    assert (libs / "notes.txt").read_text() == "keep"
    assert not fake_toolchain.exists()  # Maven never ran
