"""The one settings object: every knob is an environment variable `TXGUARD_*`, checked early."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable and what to do."""


DEFAULT_TOPIC_NAMESPACE = "txguard"
_TOPIC_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
MAX_PORT = 65535


@dataclass(frozen=True)
class TopicNames:
    """Every topic of one txguard deployment. Names are part of the wire contract: a new major
    event shape is a new `.vN` topic. The namespace keeps separate pipelines (a replay, a test)
    on one cluster apart."""

    namespace: str = DEFAULT_TOPIC_NAMESPACE

    @property
    def transactions(self) -> str:
        return f"{self.namespace}.transactions.v1"

    @property
    def decisions(self) -> str:
        return f"{self.namespace}.fraud-decisions.v1"

    @property
    def labels(self) -> str:
        return f"{self.namespace}.fraud-labels.v1"

    @property
    def terminal_events(self) -> str:
        """Transactions and labels re-keyed by terminal, for the terminal-risk aggregator."""
        return f"{self.namespace}.terminal-events.v1"

    @property
    def terminal_risk(self) -> str:
        return f"{self.namespace}.terminal-risk.v1"

    @property
    def dead_letters(self) -> str:
        return f"{self.namespace}.transactions.dlq.v1"

    def detector_state(self, group: str) -> str:
        """A detector group's own state changelog: groups never read each other's state."""
        return f"{self.namespace}.detector-state.v2.{group}"


_DEFAULT_TOPICS = TopicNames()
TRANSACTIONS_TOPIC = _DEFAULT_TOPICS.transactions
DECISIONS_TOPIC = _DEFAULT_TOPICS.decisions
LABELS_TOPIC = _DEFAULT_TOPICS.labels
TERMINAL_RISK_TOPIC = _DEFAULT_TOPICS.terminal_risk
DLQ_TOPIC = _DEFAULT_TOPICS.dead_letters


@dataclass(frozen=True)
class Settings:
    """Validated configuration shared by every txguard process."""

    home: Path
    kafka_bootstrap: str | None
    topic_partitions: int
    topic_replication_factor: int
    topic_min_insync_replicas: int
    grpc_addr: str
    store_path: Path
    card_token_key: bytes | None
    card_token_key_file: Path
    relay_batch_size: int
    outbox_retention_seconds: int
    detector_group: str
    applier_group: str
    review_threshold: float
    decline_threshold: float
    amount_threshold_minor: int
    velocity_window_seconds: int
    velocity_max_transactions: int
    consume_batch_size: int
    log_level: str
    topics: TopicNames
    # Detector: state changelog and offsets are checkpointed at most this often (decisions are
    # published per batch regardless).
    checkpoint_interval_ms: int
    terminal_risk_group: str
    # How long the detector waits for the terminal table to reach a transaction's event time
    # before scoring with the table as it is; None waits as long as it takes (replays).
    terminal_table_max_wait_ms: int | None
    # How far behind the table's watermark an entry is kept (days); None keeps every entry.
    terminal_table_retention_days: int | None
    model_dir: Path | None
    shadow_model_dir: Path | None
    model_poll_seconds: int
    # Carry every feature value on the decision event (replays and audits).
    decision_features: bool
    log_format: str  # "text" or "json"
    # Port of this process's /metrics endpoint; None: the service's default port, 0: no endpoint.
    metrics_port: int | None

    @property
    def local_kafka(self) -> bool:
        """True when txguard runs its own broker under `home` (no external cluster configured)."""
        return self.kafka_bootstrap is None

    @property
    def detector_state_topic(self) -> str:
        return self.topics.detector_state(self.detector_group)

    @property
    def kafka_dir(self) -> Path:
        return self.home / "kafka"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        reader = _EnvReader(env)
        home = Path(reader.text("TXGUARD_HOME", ".txguard")).resolve()
        key_hex = reader.optional("TXGUARD_CARD_TOKEN_KEY")
        settings = cls(
            home=home,
            kafka_bootstrap=reader.optional("TXGUARD_KAFKA_BOOTSTRAP"),
            topic_partitions=reader.integer("TXGUARD_TOPIC_PARTITIONS", 6, minimum=1),
            topic_replication_factor=reader.integer(
                "TXGUARD_TOPIC_REPLICATION_FACTOR", 1, minimum=1
            ),
            topic_min_insync_replicas=reader.integer(
                "TXGUARD_TOPIC_MIN_INSYNC_REPLICAS", 1, minimum=1
            ),
            grpc_addr=reader.text("TXGUARD_GRPC_ADDR", "127.0.0.1:50051"),
            store_path=Path(reader.text("TXGUARD_STORE_PATH", str(home / "txguard.db"))),
            card_token_key=_parse_key(key_hex) if key_hex is not None else None,
            card_token_key_file=Path(
                reader.text("TXGUARD_CARD_TOKEN_KEY_FILE", str(home / "card-token.key"))
            ),
            relay_batch_size=reader.integer("TXGUARD_RELAY_BATCH_SIZE", 2000, minimum=1),
            outbox_retention_seconds=reader.integer(
                "TXGUARD_OUTBOX_RETENTION_SECONDS", 3600, minimum=0
            ),
            detector_group=reader.text("TXGUARD_DETECTOR_GROUP", "txguard-detector"),
            applier_group=reader.text("TXGUARD_APPLIER_GROUP", "txguard-applier"),
            review_threshold=reader.fraction("TXGUARD_REVIEW_THRESHOLD", 0.5),
            decline_threshold=reader.fraction("TXGUARD_DECLINE_THRESHOLD", 0.8),
            amount_threshold_minor=reader.integer(
                "TXGUARD_AMOUNT_THRESHOLD_MINOR", 500_000, minimum=1
            ),
            velocity_window_seconds=reader.integer(
                "TXGUARD_VELOCITY_WINDOW_SECONDS", 3600, minimum=1
            ),
            velocity_max_transactions=reader.integer(
                "TXGUARD_VELOCITY_MAX_TRANSACTIONS", 10, minimum=1
            ),
            consume_batch_size=reader.integer("TXGUARD_CONSUME_BATCH_SIZE", 500, minimum=1),
            log_level=reader.log_level("TXGUARD_LOG_LEVEL", "INFO"),
            topics=TopicNames(reader.text("TXGUARD_TOPIC_NAMESPACE", DEFAULT_TOPIC_NAMESPACE)),
            checkpoint_interval_ms=reader.integer(
                "TXGUARD_CHECKPOINT_INTERVAL_MS", 1000, minimum=0
            ),
            terminal_risk_group=reader.text("TXGUARD_TERMINAL_RISK_GROUP", "txguard-terminal-risk"),
            terminal_table_max_wait_ms=reader.optional_integer(
                "TXGUARD_TERMINAL_TABLE_MAX_WAIT_MS", minimum=0, unbounded="unbounded", default=0
            ),
            terminal_table_retention_days=reader.optional_integer(
                "TXGUARD_TERMINAL_TABLE_RETENTION_DAYS",
                minimum=37,
                unbounded="unbounded",
                default=60,
            ),
            model_dir=reader.path("TXGUARD_MODEL_DIR"),
            shadow_model_dir=reader.path("TXGUARD_SHADOW_MODEL_DIR"),
            model_poll_seconds=reader.integer("TXGUARD_MODEL_POLL_SECONDS", 5, minimum=1),
            decision_features=reader.flag("TXGUARD_DECISION_FEATURES", default=False),
            log_format=reader.choice("TXGUARD_LOG_FORMAT", "text", ("text", "json")),
            metrics_port=reader.optional_integer(
                "TXGUARD_METRICS_PORT", minimum=0, maximum=MAX_PORT
            ),
        )
        for variable, name in (
            ("TXGUARD_TOPIC_NAMESPACE", settings.topics.namespace),
            ("TXGUARD_TERMINAL_RISK_GROUP", settings.terminal_risk_group),
        ):
            if not _TOPIC_SAFE.match(name):
                raise ConfigError(
                    f"{variable} may only contain letters, digits, '.', '_' and '-', got {name!r}"
                )
        if not _TOPIC_SAFE.match(settings.detector_group):
            raise ConfigError(
                "TXGUARD_DETECTOR_GROUP may only contain letters, digits, '.', '_' and '-' "
                f"(it names the group's state topic), got {settings.detector_group!r}"
            )
        if settings.velocity_window_seconds > 30 * 86_400:
            raise ConfigError(
                "TXGUARD_VELOCITY_WINDOW_SECONDS may be at most 2592000 (30 days, the history an "
                f"account keeps), got {settings.velocity_window_seconds}"
            )
        if settings.review_threshold > settings.decline_threshold:
            raise ConfigError(
                "TXGUARD_REVIEW_THRESHOLD must not exceed TXGUARD_DECLINE_THRESHOLD "
                f"({settings.review_threshold} > {settings.decline_threshold})"
            )
        if settings.topic_min_insync_replicas > settings.topic_replication_factor:
            raise ConfigError(
                "TXGUARD_TOPIC_MIN_INSYNC_REPLICAS must not exceed TXGUARD_TOPIC_REPLICATION_FACTOR"
            )
        return settings

    def describe(self) -> dict[str, str]:
        """Settings as printable strings, with the card token key redacted."""
        shown: dict[str, str] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            shown[field.name] = (
                "<redacted>" if field.name == "card_token_key" and value else str(value)
            )
        return shown


def _parse_key(key_hex: str) -> bytes:
    try:
        key = bytes.fromhex(key_hex)
    except ValueError as exc:
        raise ConfigError("TXGUARD_CARD_TOKEN_KEY must be hex-encoded") from exc
    if len(key) < 32:
        raise ConfigError("TXGUARD_CARD_TOKEN_KEY must be at least 32 bytes (64 hex characters)")
    return key


class _EnvReader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def optional(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        value = self.optional_integer(name, minimum=minimum)
        return default if value is None else value

    def optional_integer(
        self,
        name: str,
        *,
        minimum: int,
        maximum: int | None = None,
        unbounded: str | None = None,
        default: int | None = None,
    ) -> int | None:
        """The integer, `default` when unset, None when set to the word `unbounded`."""
        raw = self.optional(name)
        if raw is None:
            return default
        if unbounded is not None and raw.lower() == unbounded:
            return None
        try:
            value = int(raw)
        except ValueError as exc:
            expected = f"an integer or {unbounded!r}" if unbounded else "an integer"
            raise ConfigError(f"{name} must be {expected}, got {raw!r}") from exc
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name} must be at most {maximum}, got {value}")
        return value

    def path(self, name: str) -> Path | None:
        raw = self.optional(name)
        return Path(raw) if raw is not None else None

    def flag(self, name: str, *, default: bool) -> bool:
        raw = self.optional(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")

    def log_level(self, name: str, default: str) -> str:
        """A level name Python's logging knows (DEBUG, INFO, WARNING, WARN, ERROR, ...)."""
        value = self.text(name, default).upper()
        if value not in logging.getLevelNamesMapping():
            raise ConfigError(
                f"{name} must be a logging level (DEBUG, INFO, WARNING, ERROR, CRITICAL), "
                f"got {value!r}"
            )
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def fraction(self, name: str, default: float) -> float:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError as exc:
            raise ConfigError(f"{name} must be a number between 0 and 1, got {raw!r}") from exc
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        return value
