"""txguard's topics, their configurations, and idempotent creation."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from txguard.config import Settings
from txguard.kafka.clients import make_admin

log = logging.getLogger(__name__)

DAY_MS = 24 * 60 * 60 * 1000
HOUR_MS = 60 * 60 * 1000
_ALREADY_EXISTS = KafkaError.TOPIC_ALREADY_EXISTS


class TopicError(RuntimeError):
    """A topic is missing, could not be created (e.g. replication factor larger than the
    cluster), or does not have the partition count another requires: the operator's to fix."""


@dataclass(frozen=True)
class TopicSpec:
    """One topic: partition count, replication, cleanup policy, retention and extra configs."""

    name: str
    partitions: int
    replication_factor: int
    cleanup_policy: str  # "delete" or "compact"
    retention_ms: int | None  # None: the broker default; ignored by compact-only topics
    min_insync_replicas: int
    extra_configs: Mapping[str, str] = field(default_factory=dict)

    def configs(self) -> dict[str, str]:
        """Topic-level configs as sent to CreateTopics."""
        configs = {
            "cleanup.policy": self.cleanup_policy,
            "min.insync.replicas": str(self.min_insync_replicas),
        }
        if self.retention_ms is not None:
            configs["retention.ms"] = str(self.retention_ms)
        configs.update(self.extra_configs)
        return configs

    def new_topic(self) -> NewTopic:
        return NewTopic(
            self.name,
            num_partitions=self.partitions,
            replication_factor=self.replication_factor,
            config=self.configs(),
        )


# Compaction never touches the active segment; hourly segments let it reclaim space within hours.
_COMPACTED = {"segment.ms": str(HOUR_MS), "min.compaction.lag.ms": "0"}


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic txguard uses, in creation order."""
    replication = settings.topic_replication_factor
    min_isr = settings.topic_min_insync_replicas
    transactions_partitions = settings.topic_partitions

    def spec(
        name: str,
        cleanup_policy: str,
        retention_ms: int | None,
        extra: Mapping[str, str] | None = None,
        partitions: int = settings.topic_partitions,
    ) -> TopicSpec:
        return TopicSpec(
            name=name,
            partitions=partitions,
            replication_factor=replication,
            cleanup_policy=cleanup_policy,
            retention_ms=retention_ms,
            min_insync_replicas=min_isr,
            extra_configs=dict(extra or {}),
        )

    topics = settings.topics
    return [
        spec(topics.transactions, "delete", 7 * DAY_MS, partitions=transactions_partitions),
        spec(topics.decisions, "delete", 7 * DAY_MS),
        spec(topics.labels, "delete", 30 * DAY_MS),
        # Partition N of the table holds the entries of terminal-events partition N.
        spec(topics.terminal_events, "delete", 7 * DAY_MS),
        spec(topics.terminal_risk, "compact", None, _COMPACTED),
        spec(topics.dead_letters, "delete", 30 * DAY_MS),
        # The detector's state changelog: partition N holds the state of transactions partition N.
        spec(
            settings.detector_state_topic,
            "compact",
            None,
            _COMPACTED,
            partitions=transactions_partitions,
        ),
    ]


def existing_partition_counts(bootstrap: str, *, timeout: float = 15.0) -> dict[str, int]:
    """Partition count of every topic in the cluster; raises KafkaException if unreachable."""
    with make_admin(bootstrap) as admin:
        metadata = admin.list_topics(timeout=timeout)
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def ensure_topics(bootstrap: str, settings: Settings, *, timeout: float = 30.0) -> list[str]:
    """Create the missing txguard topics; returns the names created (idempotent).

    An existing topic with a different partition count is reported with a warning, never
    altered: repartitioning would move keys between partitions and break per-account order.
    """
    specs = topic_specs(settings)
    with make_admin(bootstrap) as admin:
        existing = {
            name: len(topic.partitions)
            for name, topic in admin.list_topics(timeout=timeout).topics.items()
        }
        for spec in specs:
            count = existing.get(spec.name)
            if count is not None and count != spec.partitions:
                log.warning(
                    "topic %s has %d partitions, configured %d; leaving it as it is",
                    spec.name,
                    count,
                    spec.partitions,
                )
        state_topic = settings.detector_state_topic
        state_count = existing.get(state_topic)
        transactions_topic = settings.topics.transactions
        transactions_count = existing.get(transactions_topic)
        if None not in (state_count, transactions_count) and state_count != transactions_count:
            log.warning(
                "%s has %s partitions but %s has %s: detector state cannot be restored "
                "partition by partition until they match",
                state_topic,
                state_count,
                transactions_topic,
                transactions_count,
            )
        if transactions_count is not None:
            # A new group's changelog follows the transactions topic as it is, not as configured.
            specs = [
                replace(spec, partitions=transactions_count) if spec.name == state_topic else spec
                for spec in specs
            ]
        missing = [spec for spec in specs if spec.name not in existing]
        if not missing:
            return []
        futures = admin.create_topics(
            [spec.new_topic() for spec in missing],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        created: list[str] = []
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                exists = isinstance(error, KafkaError) and error.code() == _ALREADY_EXISTS
                if exists:
                    continue  # Created concurrently by another process: fine.
                raise TopicError(f"could not create topic {name}: {error or exc}") from exc
            created.append(name)
        _wait_visible(admin, created, time.monotonic() + timeout)
    if created:
        log.info("created Kafka topics: %s", ", ".join(created))
    return created


def _wait_visible(admin: AdminClient, names: list[str], deadline: float) -> None:
    """Wait until created topics have leaders, so the next produce does not race creation."""
    pending = set(names)
    while pending and time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=5.0)
        for name in list(pending):
            topic = metadata.topics.get(name)
            if (
                topic is not None
                and topic.error is None
                and topic.partitions
                and all(p.leader >= 0 for p in topic.partitions.values())
            ):
                pending.discard(name)
        if pending:
            time.sleep(0.1)
    if pending:
        log.warning("topics not yet visible in metadata: %s", ", ".join(sorted(pending)))
