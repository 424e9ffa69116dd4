"""Test fixtures: one real Kafka broker for the whole test session.

The broker is either the cluster named by TXGUARD_KAFKA_BOOTSTRAP (then it cannot be stopped or
restarted from here: tests that call `kafka_broker.stop()/start()/kill()/restart()` are skipped),
or a local single-node broker started in a pytest temp dir on free ports, with jars from the same
cache as `txguard kafka fetch` (fetched on first use).

Isolation: every integration test shares this one broker AND the same topic names (the names are
part of the wire contract, so they are not randomised). A test must therefore
  - use its own consumer groups (`txguard_env` gives unique TXGUARD_DETECTOR_GROUP and
    TXGUARD_APPLIER_GROUP; make any other group id unique with a uuid suffix),
  - recognise its own records (unique ids/keys it produced, or the partition+offset returned in
    delivery reports) and ignore everything else on the topic,
  - never delete, recreate or reconfigure the shared topics, and never assume a topic is empty.
"""

from __future__ import annotations

import os
import secrets
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import delete_namespace_topics
from txguard.config import Settings
from txguard.kafka.broker import (
    KafkaFetchError,
    KafkaSetupError,
    LocalBroker,
    fetch_kafka_libs,
)
from txguard.kafka.topics import ensure_topics

# Subprocesses inherit these from the developer's shell; every other TXGUARD_* is set per test.
_INHERITED_TXGUARD = ("TXGUARD_TOPIC_", "TXGUARD_LOG_LEVEL", "TXGUARD_KAFKA_LIBS")


class KafkaBroker:
    """Handle on the session's broker; lifecycle methods skip the test on an external cluster."""

    def __init__(self, bootstrap: str, local: LocalBroker | None) -> None:
        self.bootstrap = bootstrap
        self._local = local

    @property
    def is_local(self) -> bool:
        """True when this session started the broker (so it can be stopped and restarted)."""
        return self._local is not None

    @property
    def data_dir(self) -> Path:
        return self._require_local().data_dir

    def stop(self) -> None:
        self._require_local().stop()

    def start(self) -> None:
        local = self._require_local()
        local.start(tied=True)
        assert local.bootstrap == self.bootstrap

    def kill(self) -> None:
        self._require_local().kill()

    def restart(self) -> None:
        """Controlled stop, then start on the same ports and data."""
        self.stop()
        self.start()

    def _require_local(self) -> LocalBroker:
        if self._local is None:
            pytest.skip("needs the local broker; TXGUARD_KAFKA_BOOTSTRAP names an external cluster")
        return self._local


def _settings(home: Path, bootstrap: str | None) -> Settings:
    env = {k: v for k, v in os.environ.items() if k.startswith(_INHERITED_TXGUARD)}
    env["TXGUARD_HOME"] = str(home)
    if bootstrap is not None:
        env["TXGUARD_KAFKA_BOOTSTRAP"] = bootstrap
    return Settings.from_env(env)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """The session's broker, with every txguard topic created once."""
    home = tmp_path_factory.mktemp("kafka-session")
    external = os.environ.get("TXGUARD_KAFKA_BOOTSTRAP", "").strip() or None
    if external is not None:
        ensure_topics(external, _settings(home, external))
        yield KafkaBroker(external, None)
        return
    try:
        fetch_kafka_libs()
    except (KafkaSetupError, KafkaFetchError) as exc:
        pytest.fail(f"cannot run the local Kafka broker: {exc}", pytrace=False)
    local = LocalBroker(home / "kafka")
    try:
        # Killed with the test run, should that be killed before it can stop the broker.
        local.start(tied=True)
        ensure_topics(local.bootstrap, _settings(home, local.bootstrap))
        yield KafkaBroker(local.bootstrap, local)
    finally:
        local.stop()


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def txguard_env(tmp_path: Path, kafka_broker: KafkaBroker) -> dict[str, str]:
    """Environment for a txguard subprocess of this test, isolated from every other test."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TXGUARD_") or key.startswith(_INHERITED_TXGUARD)
    }
    suffix = uuid.uuid4().hex[:12]
    env.update(
        {
            "TXGUARD_HOME": str(tmp_path / "home"),
            "TXGUARD_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
            "TXGUARD_CARD_TOKEN_KEY": secrets.token_hex(32),
            "TXGUARD_STORE_PATH": str(tmp_path / "txguard.db"),
            "TXGUARD_GRPC_ADDR": f"127.0.0.1:{free_tcp_port()}",
            "TXGUARD_DETECTOR_GROUP": f"txguard-detector-{suffix}",
            "TXGUARD_APPLIER_GROUP": f"txguard-applier-{suffix}",
            "TXGUARD_TERMINAL_RISK_GROUP": f"txguard-terminal-risk-{suffix}",
            # Tests run many services side by side: no fixed metrics ports unless a test asks.
            "TXGUARD_METRICS_PORT": "0",
        }
    )
    return env


@pytest.fixture
def own_topics(txguard_env: dict[str, str], kafka_broker: KafkaBroker) -> Iterator[Settings]:
    """The test's settings with a topic namespace of its own, whose topics exist (a test that
    deletes or recreates topics leaves the shared ones alone); its topics are deleted after."""
    namespace = f"own-{uuid.uuid4().hex[:12]}"
    settings = Settings.from_env({**txguard_env, "TXGUARD_TOPIC_NAMESPACE": namespace})
    ensure_topics(kafka_broker.bootstrap, settings)
    yield settings
    delete_namespace_topics(settings)
