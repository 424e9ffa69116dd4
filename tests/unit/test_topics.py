"""Topic specs and client configurations: pure functions, no broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from txguard.config import (
    DECISIONS_TOPIC,
    DLQ_TOPIC,
    LABELS_TOPIC,
    TERMINAL_RISK_TOPIC,
    TRANSACTIONS_TOPIC,
    Settings,
    TopicNames,
)
from txguard.kafka.broker import STATE_FILE, LocalBroker
from txguard.kafka.clients import (
    KafkaNotRunning,
    admin_config,
    consumer_config,
    producer_config,
    resolve_bootstrap,
)
from txguard.kafka.topics import DAY_MS, topic_specs

# The state changelog of the default detector group.
DEFAULT_STATE_TOPIC = TopicNames().detector_state("txguard-detector")


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"TXGUARD_HOME": str(tmp_path / "home"), **env})


def test_every_topic_has_a_spec(tmp_path: Path) -> None:
    names = [spec.name for spec in topic_specs(_settings(tmp_path))]
    assert names == [
        TRANSACTIONS_TOPIC,
        DECISIONS_TOPIC,
        LABELS_TOPIC,
        "txguard.terminal-events.v1",
        TERMINAL_RISK_TOPIC,
        DLQ_TOPIC,
        DEFAULT_STATE_TOPIC,
    ]


def test_policies_and_retention(tmp_path: Path) -> None:
    specs = {spec.name: spec for spec in topic_specs(_settings(tmp_path))}
    expected = {
        TRANSACTIONS_TOPIC: ("delete", 7 * DAY_MS),
        DECISIONS_TOPIC: ("delete", 7 * DAY_MS),
        LABELS_TOPIC: ("delete", 30 * DAY_MS),
        "txguard.terminal-events.v1": ("delete", 7 * DAY_MS),
        TERMINAL_RISK_TOPIC: ("compact", None),
        DLQ_TOPIC: ("delete", 30 * DAY_MS),
        DEFAULT_STATE_TOPIC: ("compact", None),
    }
    for name, (policy, retention) in expected.items():
        configs = specs[name].configs()
        assert configs["cleanup.policy"] == policy
        assert configs.get("retention.ms") == (None if retention is None else str(retention))


@pytest.mark.parametrize("partitions", ["1", "6", "12"])
def test_state_changelog_has_the_transactions_partition_count(
    tmp_path: Path, partitions: str
) -> None:
    specs = {
        spec.name: spec
        for spec in topic_specs(_settings(tmp_path, TXGUARD_TOPIC_PARTITIONS=partitions))
    }
    assert specs[TRANSACTIONS_TOPIC].partitions == int(partitions)
    assert specs[DEFAULT_STATE_TOPIC].partitions == specs[TRANSACTIONS_TOPIC].partitions


def test_replication_and_min_insync_come_from_settings(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        TXGUARD_TOPIC_REPLICATION_FACTOR="3",
        TXGUARD_TOPIC_MIN_INSYNC_REPLICAS="2",
    )
    for spec in topic_specs(settings):
        new_topic = spec.new_topic()
        assert new_topic.replication_factor == 3
        assert new_topic.config is not None
        assert new_topic.config["min.insync.replicas"] == "2"


def test_producer_config_is_idempotent_and_durable() -> None:
    config = producer_config("h:1", client_id="relay")
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["compression.type"] == "lz4"
    assert config["linger.ms"] == 1
    assert config["bootstrap.servers"] == "h:1" and config["client.id"] == "relay"


def test_consumer_config_commits_manually_and_reads_committed() -> None:
    config = consumer_config("h:1", group_id="g", client_id="c")
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False
    assert config["auto.offset.reset"] == "earliest"
    assert config["partition.assignment.strategy"] == "cooperative-sticky"
    assert config["isolation.level"] == "read_committed"
    assert config["group.id"] == "g"


def test_overrides_win() -> None:
    assert producer_config("h:1", client_id="p", **{"linger.ms": 50})["linger.ms"] == 50
    overridden = consumer_config("h:1", group_id="g", client_id="c", **{"isolation.level": "x"})
    assert overridden["isolation.level"] == "x"
    assert admin_config("h:1")["bootstrap.servers"] == "h:1"


def test_resolve_bootstrap_prefers_the_configured_cluster(tmp_path: Path) -> None:
    settings = _settings(tmp_path, TXGUARD_KAFKA_BOOTSTRAP="kafka-1:9092,kafka-2:9092")
    assert resolve_bootstrap(settings) == "kafka-1:9092,kafka-2:9092"


def test_resolve_bootstrap_without_any_broker_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(KafkaNotRunning, match="txguard kafka up"):
        resolve_bootstrap(_settings(tmp_path))


def test_resolve_bootstrap_ignores_a_stale_state_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.kafka_dir.mkdir(parents=True)
    # pid 1 is alive but is not a Kafka broker of this data dir (guards against pid reuse).
    state = {"pid": 1, "port": 19092, "controller_port": 19093, "cluster_id": "x"}
    (settings.kafka_dir / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(KafkaNotRunning):
        resolve_bootstrap(settings)


def test_local_broker_reuses_recorded_ports(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    data_dir.mkdir()
    state = {"pid": None, "port": 29092, "controller_port": 29093, "cluster_id": "x"}
    (data_dir / STATE_FILE).write_text(json.dumps(state))
    broker = LocalBroker(data_dir)
    assert (broker.port, broker.controller_port) == (29092, 29093)
    assert broker.bootstrap == "127.0.0.1:29092"
    assert not broker.is_running()


def test_local_broker_picks_two_distinct_free_ports(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "kafka")
    assert broker.port != broker.controller_port
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"


def test_a_namespace_renames_every_topic(tmp_path: Path) -> None:
    names = [
        spec.name for spec in topic_specs(_settings(tmp_path, TXGUARD_TOPIC_NAMESPACE="replay-42"))
    ]
    assert names == [
        "replay-42.transactions.v1",
        "replay-42.fraud-decisions.v1",
        "replay-42.fraud-labels.v1",
        "replay-42.terminal-events.v1",
        "replay-42.terminal-risk.v1",
        "replay-42.transactions.dlq.v1",
        "replay-42.detector-state.v2.txguard-detector",
    ]
