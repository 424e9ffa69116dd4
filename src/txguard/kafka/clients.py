"""The one place that builds confluent-kafka (librdkafka) configurations and clients.

Every producer is idempotent with acks=all; every consumer commits manually, stores offsets
explicitly, reads committed data only and rebalances cooperatively. librdkafka's log lines are
routed to Python logging (logger `txguard.kafka.librdkafka`), never printed to stderr; a line
repeated within 30 s is passed once, and the next one passed says how many were dropped.

Dotted librdkafka keys are passed as overrides with `**{"linger.ms": 20}`; callbacks such as
`stats_cb`, `error_cb` or `on_commit` can be passed the same way.

Statistics (`statistics.interval.ms` + `stats_cb`) feed the Kafka-health metrics
(`txguard.observability.exporter.kafka_statistics`). A client reports them only when asked
(`statistics=True`): librdkafka queues each report until the application polls or consumes, so a
client that can sit idle without being polled (a helper reader, an idle producer) would pile them
up. Long-running loops ask for them on the clients they poll all the time.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from txguard.config import Settings
from txguard.kafka.broker import running_broker_bootstrap
from txguard.observability.exporter import STATISTICS_INTERVAL_MS, kafka_statistics
from txguard.observability.log_repeats import RepeatedLines

LIBRDKAFKA_LOGGER = logging.getLogger("txguard.kafka.librdkafka")
# librdkafka logs every reconnection attempt: one line of a kind per 30 s, with the count.
LIBRDKAFKA_LOGGER.addFilter(RepeatedLines())

AdminConfig = dict[str, str | int | float | bool]


class KafkaNotRunning(RuntimeError):
    """No Kafka cluster is configured and no local broker is running."""


def resolve_bootstrap(settings: Settings) -> str:
    """TXGUARD_KAFKA_BOOTSTRAP if set, else the address of the running local broker."""
    if settings.kafka_bootstrap is not None:
        return settings.kafka_bootstrap
    bootstrap = running_broker_bootstrap(settings.kafka_dir)
    if bootstrap is None:
        raise KafkaNotRunning(
            "no Kafka broker: run `txguard kafka up` or set TXGUARD_KAFKA_BOOTSTRAP"
        )
    return bootstrap


def producer_config(bootstrap: str, *, client_id: str, **overrides: Any) -> dict[str, Any]:
    """Idempotent, ordered, durable producer settings; `overrides` win."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        # Explicit although implied by acks=all in recent librdkafka: no duplicates on retry.
        "enable.idempotence": True,
        "acks": "all",
        # 5 is the most the idempotent producer allows while keeping per-partition order.
        "max.in.flight.requests.per.connection": 5,
        # Records wait at most 1 ms for others to share their request: under load, batches form
        # anyway while earlier requests are in flight, and each hop adds 1 ms, not librdkafka's 5.
        "linger.ms": 1,
        "compression.type": "lz4",
        "batch.size": 512 * 1024,
        "batch.num.messages": 10_000,
        # librdkafka's default queue is 1 GiB; 128 MiB bounds memory on a laptop.
        "queue.buffering.max.kbytes": 128 * 1024,
        "socket.keepalive.enable": True,
    }
    config.update(overrides)
    return config


# For consumers off the payment path (the terminal-risk stages, the detector's terminal table):
# the broker answers a fetch once 64 KiB are there or after 100 ms, instead of at every record.
# Each fetch costs the co-located broker CPU that the payment path needs; these consumers batch
# over 250 ms themselves, and the table is read seven days of event time behind the transactions.
BACKGROUND_FETCH: Final[dict[str, Any]] = {"fetch.wait.max.ms": 100, "fetch.min.bytes": 64 * 1024}


def consumer_config(
    bootstrap: str, *, group_id: str, client_id: str, **overrides: Any
) -> dict[str, Any]:
    """Manual-commit, read_committed, cooperative-sticky consumer settings; `overrides` win."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "client.id": client_id,
        # Classic protocol chosen deliberately: client-side cooperative-sticky assignment,
        # supported by every broker since 2.4; KIP-848 (`consumer`) would ignore the strategy.
        "group.protocol": "classic",
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        # A SIGKILLed member is replaced within 10 s instead of the default 45 s.
        "session.timeout.ms": 10_000,
        # Members learn of a rebalance at their next heartbeat, and a cooperative rebalance takes
        # two rounds: with 1 s instead of 3 s, a partition handed to a new member sits idle for
        # about 1 s instead of 3.5 s. A heartbeat a second per consumer costs the broker nothing.
        "heartbeat.interval.ms": 1_000,
        "socket.keepalive.enable": True,
    }
    config.update(overrides)
    return config


def admin_config(bootstrap: str, *, client_id: str = "txguard-admin") -> AdminConfig:
    return {"bootstrap.servers": bootstrap, "client.id": client_id}


def statistics_config() -> dict[str, Any]:
    """The settings that make a client report librdkafka statistics to the metrics."""
    return {"statistics.interval.ms": STATISTICS_INTERVAL_MS, "stats_cb": kafka_statistics}


def make_producer(
    bootstrap: str,
    *,
    client_id: str,
    logger: logging.Logger = LIBRDKAFKA_LOGGER,
    statistics: bool = False,
    **overrides: Any,
) -> Producer:
    """A producer; with `statistics=True` the caller must poll it regularly, idle or not."""
    if statistics:
        overrides = {**statistics_config(), **overrides}
    return Producer(producer_config(bootstrap, client_id=client_id, **overrides), logger=logger)


def make_consumer(
    bootstrap: str,
    *,
    group_id: str,
    client_id: str,
    logger: logging.Logger = LIBRDKAFKA_LOGGER,
    statistics: bool = False,
    **overrides: Any,
) -> Consumer:
    """A consumer; with `statistics=True` the caller must consume from it continuously."""
    if statistics:
        overrides = {**statistics_config(), **overrides}
    config = consumer_config(bootstrap, group_id=group_id, client_id=client_id, **overrides)
    return Consumer(config, logger=logger)


def make_admin(
    bootstrap: str,
    *,
    client_id: str = "txguard-admin",
    logger: logging.Logger = LIBRDKAFKA_LOGGER,
) -> AdminClient:
    """An AdminClient; use it as a context manager so it is destroyed deterministically."""
    return AdminClient(admin_config(bootstrap, client_id=client_id), logger=logger)


def partitions_of(client: Consumer | Producer, topic: str, *, timeout: float) -> list[int]:
    """The topic's partition numbers, as the cluster tells `client` now (its own metadata is
    updated by the answer); empty when the topic does not exist. Raises KafkaException when the
    cluster does not answer."""
    found = client.list_topics(topic, timeout=timeout).topics.get(topic)
    if found is None or found.error is not None:
        return []
    return sorted(found.partitions)
