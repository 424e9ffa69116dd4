"""`txguard kafka fetch|up|down|status|topics`: the user-facing side of the local broker."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from confluent_kafka import KafkaException

from txguard.config import Settings
from txguard.kafka.broker import (
    KAFKA_VERSION,
    BrokerStartError,
    KafkaFetchError,
    KafkaSetupError,
    LocalBroker,
    fetch_kafka_libs,
    kafka_libs_dir,
    libs_ready,
    read_broker_state,
    require_java,
)
from txguard.kafka.clients import KafkaNotRunning, resolve_bootstrap
from txguard.kafka.topics import TopicError, ensure_topics, existing_partition_counts, topic_specs

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_PREREQUISITE = 3  # Java, Maven or the jars are missing: nothing txguard can fix by itself.


def run_kafka_command(action: str, settings: Settings) -> int:
    handlers: dict[str, Callable[[Settings], int]] = {
        "fetch": _fetch,
        "up": _up,
        "down": _down,
        "status": _status,
        "topics": _topics,
    }
    handler = handlers.get(action)
    if handler is None:
        _error(f"unknown kafka action {action!r}; choose one of {', '.join(handlers)}")
        return 2
    _configure_logging(settings)
    try:
        return handler(settings)
    except KafkaSetupError as exc:
        _error(str(exc))
        return EXIT_PREREQUISITE
    except (KafkaFetchError, BrokerStartError, KafkaNotRunning, TopicError) as exc:
        _error(str(exc))
        return EXIT_FAILED
    except KafkaException as exc:
        _error(f"Kafka request failed: {exc.args[0] if exc.args else exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def _fetch(settings: Settings) -> int:
    require_java()  # Even with the jars cached: `make test` relies on fetch to check Java early.
    libs = kafka_libs_dir()
    if libs_ready(libs):
        print(f"Kafka {KAFKA_VERSION} jars already in {libs}")
        return EXIT_OK
    print(f"fetching Kafka {KAFKA_VERSION} jars from Maven Central into {libs} ...", flush=True)
    fetch_kafka_libs(libs)
    print(f"Kafka {KAFKA_VERSION} jars ready in {libs}")
    return EXIT_OK


def _up(settings: Settings) -> int:
    if settings.kafka_bootstrap is not None:
        print(
            f"using the Kafka cluster at {settings.kafka_bootstrap} (TXGUARD_KAFKA_BOOTSTRAP); "
            "no local broker started"
        )
        _report_created(ensure_topics(settings.kafka_bootstrap, settings))
        return EXIT_OK
    require_java()
    if not libs_ready(kafka_libs_dir()):
        _fetch(settings)
    broker = LocalBroker.from_settings(settings)
    if broker.is_running():
        print(f"Kafka broker already running at {broker.bootstrap} (pid {broker.pid})")
    else:
        print(f"starting Kafka {KAFKA_VERSION} broker in {broker.data_dir} ...", flush=True)
        broker.start()
        print(f"Kafka broker running at {broker.bootstrap} (pid {broker.pid})")
    _report_created(ensure_topics(broker.bootstrap, settings))
    return EXIT_OK


def _down(settings: Settings) -> int:
    broker_dir = settings.kafka_dir
    if read_broker_state(broker_dir) is None:
        print(f"no local Kafka broker in {broker_dir}; nothing to stop")
        return EXIT_OK
    broker = LocalBroker(broker_dir)
    pid = broker.pid
    if pid is None:
        print(f"local Kafka broker in {broker_dir} is not running")
        return EXIT_OK
    broker.stop()
    print(f"stopped Kafka broker (pid {pid}); data kept in {broker_dir}")
    return EXIT_OK


def _status(settings: Settings) -> int:
    if settings.kafka_bootstrap is not None:
        print(f"cluster: external, TXGUARD_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}")
    else:
        state = read_broker_state(settings.kafka_dir)
        broker = LocalBroker(settings.kafka_dir) if state is not None else None
        pid = broker.pid if broker is not None else None
        if broker is None or pid is None:
            print(f"local broker: not running (data dir {settings.kafka_dir})")
            return EXIT_FAILED
        print(f"local broker: running, pid {pid}, bootstrap {broker.bootstrap}")
        print(f"data dir: {settings.kafka_dir}")
    bootstrap = resolve_bootstrap(settings)
    try:
        counts = existing_partition_counts(bootstrap, timeout=10.0)
    except KafkaException as exc:
        print(f"reachable: no ({exc.args[0] if exc.args else exc})")
        return EXIT_FAILED
    print("reachable: yes")
    print("topics:")
    known = {spec.name for spec in topic_specs(settings)}
    for spec in topic_specs(settings):
        count = counts.get(spec.name)
        shown = "MISSING (run `txguard kafka topics`)" if count is None else f"{count} partitions"
        print(f"  {spec.name:<32} {shown}")
    for name in sorted(set(counts) - known):
        if not name.startswith("__"):
            print(f"  {name:<32} {counts[name]} partitions (not a txguard topic)")
    return EXIT_OK


def _topics(settings: Settings) -> int:
    _report_created(ensure_topics(resolve_bootstrap(settings), settings))
    return EXIT_OK


def _report_created(created: list[str]) -> None:
    if created:
        print(f"created topics: {', '.join(created)}")
    else:
        print("all txguard topics exist")


def _error(message: str) -> None:
    print(f"txguard: {message}", file=sys.stderr)


def _configure_logging(settings: Settings) -> None:
    # Only when nobody configured logging: warnings (e.g. librdkafka's) reach stderr as one line;
    # INFO is left out (these commands print their own progress); DEBUG is honoured.
    if not logging.getLogger().handlers:
        level = logging.getLevelNamesMapping().get(settings.log_level, logging.INFO)
        level = level if level <= logging.DEBUG else max(level, logging.WARNING)
        logging.basicConfig(
            level=level,
            format="txguard: %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
