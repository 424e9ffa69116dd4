"""The /metrics endpoint of each service, and librdkafka statistics turned into catalogue metrics.

Each service serves Prometheus' text format over HTTP on its own port (prometheus_client's
server, on a daemon thread). Port choice: `TXGUARD_METRICS_PORT` when set (0: no endpoint), else
the service's default below, so that one host can run every service with no configuration.

The endpoint binds all interfaces by default (`DEFAULT_METRICS_HOST`), as exporters
conventionally do, so Prometheus can scrape it from another host or container; the metrics carry
no card, account or client data. Pass `host="127.0.0.1"` to keep it local.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from txguard.config import ConfigError
from txguard.observability import metrics

log = logging.getLogger(__name__)

DEFAULT_METRICS_HOST: Final = "0.0.0.0"  # noqa: S104 (exporters bind all interfaces; see above)
DEFAULT_METRICS_PORTS: Final[Mapping[str, int]] = {
    "transactions": 9464,
    "relay": 9465,
    "detector": 9466,
    "applier": 9467,
    "terminal-risk": 9468,
}
# How often librdkafka reports statistics (`statistics.interval.ms`): the resolution of the
# broker connection state and of the round-trip times.
STATISTICS_INTERVAL_MS: Final = 10_000

_servers: dict[int, WSGIServer] = {}
_servers_lock = threading.Lock()


class MetricsEndpointError(ConfigError):
    """The metrics endpoint cannot listen; the message says which setting to change."""


def default_metrics_port(service: str) -> int:
    try:
        return DEFAULT_METRICS_PORTS[service]
    except KeyError:
        raise ValueError(f"no default metrics port for service {service!r}") from None


def start_metrics_endpoint(
    service: str, port: int | None, *, host: str = DEFAULT_METRICS_HOST
) -> int | None:
    """Serve /metrics for `service`; returns the port, or None when `port` is 0 (disabled).

    `port` None means the service's default port. Raises MetricsEndpointError when the port is
    taken or the host is not an address of this machine.
    """
    if port is None:
        port = default_metrics_port(service)
    if port == 0:
        log.info("metrics endpoint disabled (TXGUARD_METRICS_PORT=0)")
        return None
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as exc:
        reason = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
        raise MetricsEndpointError(
            f"cannot serve metrics on {host}:{port} ({reason}); stop the other process, set "
            "TXGUARD_METRICS_PORT to a free port, or to 0 to run without a metrics endpoint"
        ) from None
    with _servers_lock:
        _servers[port] = server
    metrics.SERVICE_INFO.labels(service).info({"version": _txguard_version()})
    log.info("metrics endpoint listening on %s:%d", host, port)
    return port


def stop_metrics_endpoint(port: int) -> None:
    """Stop an endpoint started by `start_metrics_endpoint` (the process usually just exits)."""
    with _servers_lock:
        server = _servers.pop(port, None)
    if server is not None:
        server.shutdown()
        server.server_close()


def _txguard_version() -> str:
    try:
        return version("txguard")
    except PackageNotFoundError:
        return "unknown"


# -- librdkafka statistics ---------------------------------------------------------------------

# Broker states in which requests flow (UPDATE: the address is being refreshed, still connected).
_CONNECTED_STATES: Final = frozenset({"UP", "UPDATE"})


class KafkaStatistics:
    """Turns librdkafka's statistics JSON into the Kafka-health metrics of the catalogue.

    Per broker entry (learned brokers and configured bootstrap ones; logical ones such as
    `GroupCoordinator` are aliases and skipped):
    - connected: 1 in state UP/UPDATE; 0 while down or reconnecting. A broker resting in INIT
      whose connection attempts do not grow is idle (librdkafka connects only to the brokers it
      needs), not down: its series is removed rather than reported as 0;
    - round-trip time, average and p99, over the last interval (only when requests were made).
    Producers also report their local queue length.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Connection attempts per (client id, client type, broker) at the previous report.
        self._connects: dict[tuple[str, str, str], int] = {}
        self._reported: dict[tuple[str, str], set[str]] = {}

    def __call__(self, stats_json: str) -> None:
        """The `stats_cb` of every txguard client; never raises into librdkafka's poll."""
        self.report(stats_json)

    def report(self, stats_json: str) -> Mapping[str, Any] | None:
        """Update the metrics from one report; returns it parsed (None if it is not a JSON
        object), for a callback that reads more of it. Never raises."""
        try:
            stats = json.loads(stats_json)
        except Exception:
            log.warning("ignoring malformed librdkafka statistics", exc_info=True)
            return None
        try:
            self.update(stats)
        except Exception:
            log.warning("ignoring malformed librdkafka statistics", exc_info=True)
        return stats if isinstance(stats, Mapping) else None

    def update(self, stats: Mapping[str, Any]) -> None:
        client_id = str(stats.get("client_id", ""))
        client_type = str(stats.get("type", ""))
        client = (client_id, client_type)
        with self._lock:
            reported: set[str] = set()
            brokers: Mapping[str, Any] = stats.get("brokers") or {}
            for name, broker in brokers.items():
                if broker.get("source") in ("logical", "internal"):
                    continue
                connected = self._connected(client, str(name), broker)
                if connected is None:
                    continue
                labels = (client_id, client_type, str(name))
                metrics.KAFKA_BROKER_CONNECTED.labels(*labels).set(connected)
                rtt = broker.get("rtt") or {}
                if rtt.get("cnt", 0) > 0:
                    # librdkafka reports microseconds.
                    metrics.KAFKA_BROKER_RTT_AVG.labels(*labels).set(rtt["avg"] / 1e6)
                    metrics.KAFKA_BROKER_RTT_P99.labels(*labels).set(rtt["p99"] / 1e6)
                reported.add(str(name))
            for gone in self._reported.get(client, set()) - reported:
                self._remove(client, gone)
            self._reported[client] = reported
            if client_type == "producer" and "msg_cnt" in stats:
                metrics.KAFKA_PRODUCER_QUEUE.labels(client_id).set(stats["msg_cnt"])

    def _connected(
        self, client: tuple[str, str], name: str, broker: Mapping[str, Any]
    ) -> int | None:
        """1 connected, 0 down or reconnecting, None idle (not reported)."""
        state = broker.get("state")
        connects = int(broker.get("connects", 0))
        previous = self._connects.get((*client, name))
        self._connects[(*client, name)] = connects
        if state in _CONNECTED_STATES:
            return 1
        if state == "INIT" and (previous is None or connects <= previous):
            return None
        return 0

    def _remove(self, client: tuple[str, str], broker: str) -> None:
        labels = (*client, broker)
        for metric in (
            metrics.KAFKA_BROKER_CONNECTED,
            metrics.KAFKA_BROKER_RTT_AVG,
            metrics.KAFKA_BROKER_RTT_P99,
        ):
            metric.remove(*labels)


# The one statistics callback: clients.py attaches it to every client that reports statistics.
kafka_statistics: Final = KafkaStatistics()
