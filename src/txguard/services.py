"""`txguard serve SERVICE`: runs one service in the foreground until SIGTERM or SIGINT.

On SIGTERM a service drains: it finishes the batch in hand, commits, and exits 0. SIGKILL loses
nothing either: the store and the committed Kafka offsets are the only state that matters.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Callable

from txguard.config import ConfigError, Settings
from txguard.observability.logging import configure_logging

log = logging.getLogger(__name__)

# GIL switch interval of `serve transactions` (Python's default: 5 ms). Its writer and relay
# threads take the GIL back after every SQLite statement, and the writer holds the store's write
# lock meanwhile: behind a busy event loop each take-back waited up to the interval.
TRANSACTIONS_SWITCH_INTERVAL_SECONDS = 0.001


def run_service(name: str, settings: Settings, *, relay: bool = True) -> int:
    """Run until stopped; exit code 0 after a clean stop, 2 for a configuration mistake."""
    from txguard.fraud.changelog import ChangelogNotCopartitioned
    from txguard.fraud.live_model import ModelNotLoadable
    from txguard.kafka.topics import TopicError

    configure_logging(settings.log_level, name, settings.log_format)
    try:
        return _run(name, settings, relay=relay)
    except (ConfigError, ChangelogNotCopartitioned, TopicError, ModelNotLoadable) as exc:
        # A mistake the operator can fix: one clear line, no traceback.
        print(f"txguard serve {name}: {exc}", file=sys.stderr)
        return 2


def _run(name: str, settings: Settings, *, relay: bool) -> int:
    from txguard.gc_policy import set_service_collector
    from txguard.observability.exporter import start_metrics_endpoint

    set_service_collector()
    # First, so the target is up (and shows what the service waits for) before Kafka answers.
    start_metrics_endpoint(name, settings.metrics_port)
    if name == "transactions":
        return _run_transactions(settings, relay=relay)
    runners: dict[str, Callable[[Settings, threading.Event], None]] = {
        "relay": _relay,
        "detector": _detector,
        "applier": _applier,
        "terminal-risk": _terminal_risk,
    }
    stop = threading.Event()
    _stop_on_signals(lambda: stop.set())
    log.info("starting %s", name)
    runners[name](settings, stop)
    log.info("%s stopped", name)
    return 0


def _relay(settings: Settings, stop: threading.Event) -> None:
    from txguard.transactions.relay import OutboxRelay

    OutboxRelay(settings).run(stop)


def _detector(settings: Settings, stop: threading.Event) -> None:
    from txguard.fraud.detector import FraudDetector
    from txguard.gc_policy import freeze_loaded_heap

    # The terminal table, loaded at start, is most of the detector's heap.
    FraudDetector(settings, on_loaded=freeze_loaded_heap).run(stop)


def _terminal_risk(settings: Settings, stop: threading.Event) -> None:
    from txguard.fraud.terminal_risk import TerminalRiskAggregator

    TerminalRiskAggregator(settings).run(stop)


def _applier(settings: Settings, stop: threading.Event) -> None:
    from txguard.transactions.applier import DecisionApplier

    DecisionApplier(settings).run(stop)


def _run_transactions(settings: Settings, *, relay: bool) -> int:
    from txguard.transactions.server import serve

    sys.setswitchinterval(TRANSACTIONS_SWITCH_INTERVAL_SECONDS)
    relay_stop = threading.Event()
    relay_thread: threading.Thread | None = None
    if relay:
        relay_thread = threading.Thread(
            target=_relay, args=(settings, relay_stop), name="outbox-relay", daemon=True
        )
        relay_thread.start()

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await serve(settings, stopping)

    log.info("starting transactions service on %s", settings.grpc_addr)
    asyncio.run(main())
    # The relay stops after the API so that everything accepted has had its chance to publish.
    relay_stop.set()
    if relay_thread is not None:
        relay_thread.join(timeout=30)
    log.info("transactions service stopped")
    return 0


def _stop_on_signals(stop: Callable[[], None]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop())
