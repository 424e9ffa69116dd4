"""A Kafka cluster for the length of a command: the configured one, or the local broker."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from txguard.config import Settings


class KafkaUnavailable(RuntimeError):
    """No cluster could be reached or started; the message says what to do."""


@contextlib.contextmanager
def running_kafka(settings: Settings) -> Iterator[str]:
    """The configured cluster, or a local broker started here (and stopped again on exit if it
    was not running before), with txguard's topics created. Yields the bootstrap address."""
    from txguard.kafka.broker import (
        BrokerStartError,
        KafkaFetchError,
        KafkaSetupError,
        LocalBroker,
        fetch_kafka_libs,
    )
    from txguard.kafka.topics import ensure_topics

    if settings.kafka_bootstrap is not None:
        ensure_topics(settings.kafka_bootstrap, settings)
        yield settings.kafka_bootstrap
        return
    broker = LocalBroker.from_settings(settings)
    started_here = not broker.is_running()
    try:
        if started_here:
            print("starting the local Kafka broker (first run fetches its jars) ...", flush=True)
            fetch_kafka_libs()
            # Stopped below; should this process be killed first, the kernel stops it (a tie
            # only the main thread can make: from another, the broker may outlive a kill).
            broker.start(tied=threading.current_thread() is threading.main_thread())
    except (BrokerStartError, KafkaFetchError, KafkaSetupError) as exc:
        raise KafkaUnavailable(str(exc)) from exc
    try:
        ensure_topics(broker.bootstrap, settings)
        yield broker.bootstrap
    finally:
        if started_here:
            broker.stop()
