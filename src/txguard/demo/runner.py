"""`txguard demo`: broker, services as separate processes, load, live view, checked summary."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass

import grpc

from txguard.clock import now_us
from txguard.config import Settings
from txguard.demo.console import DecisionTally, LiveView, summary_lines
from txguard.demo.processes import (
    ServiceProcess,
    child_environment,
    start_service,
    wait_for_grpc_serving,
)
from txguard.kafka.session import KafkaUnavailable, running_kafka
from txguard.schema.v1.service_pb2_grpc import TransactionServiceStub
from txguard.simulate.load_generator import LoadStats, TransactionFactory, generate_load
from txguard.store.sqlite import SqliteStore, applied_after

# Services in shutdown order: the API (and its relay) first, so everything accepted is published.
SERVICES = ("transactions", "detector", "terminal-risk", "applier")


@dataclass(frozen=True)
class DemoOptions:
    duration_seconds: float
    rate_per_second: float
    accounts: int
    seed: int
    drain_timeout_seconds: float = 120.0


class DemoError(RuntimeError):
    """The demo could not start; the message says what to do."""


def run_demo(settings: Settings, options: DemoOptions) -> int:
    if options.rate_per_second <= 0 or options.duration_seconds <= 0 or options.accounts <= 0:
        print("txguard demo: --rate, --duration and --accounts must be positive", file=sys.stderr)
        return 2
    try:
        with running_kafka(settings) as bootstrap:
            return _run_with_kafka(settings, options, bootstrap)
    except (DemoError, KafkaUnavailable) as exc:
        print(f"txguard demo: {exc}", file=sys.stderr)
        return 1


def _run_with_kafka(settings: Settings, options: DemoOptions, bootstrap: str) -> int:
    from txguard.transactions.card import create_card_key_file

    if settings.card_token_key is None and not settings.card_token_key_file.exists():
        create_card_key_file(settings.card_token_key_file)
    env = child_environment(
        {"TXGUARD_HOME": str(settings.home), "TXGUARD_KAFKA_BOOTSTRAP": bootstrap}
    )
    log_dir = settings.home / "logs"
    services: list[ServiceProcess] = []
    try:
        for name in SERVICES:
            services.append(start_service(name, env=env, log_dir=log_dir))
        try:
            wait_for_grpc_serving(settings.grpc_addr, services[0])
        except (RuntimeError, TimeoutError) as exc:
            raise DemoError(f"{exc}\nservice logs are in {log_dir}") from exc
        print(
            f"pipeline up: API on {settings.grpc_addr}, Kafka on {bootstrap}, "
            f"logs in {log_dir}; sending {options.rate_per_second:g} tx/s for "
            f"{options.duration_seconds:g}s (Ctrl-C to stop early)",
            flush=True,
        )
        return asyncio.run(_drive(settings, options, services))
    finally:
        codes = {service.name: service.terminate() for service in services}
        unclean = {name: code for name, code in codes.items() if code != 0}
        if unclean:
            print(f"services that did not stop cleanly: {unclean}", file=sys.stderr)


async def _wait_until_pipeline_decides(
    target: str,
    factory: TransactionFactory,
    store: SqliteStore,
    services: list[ServiceProcess],
    timeout: float = 120.0,
) -> None:
    """One warm-up transaction through the whole pipeline, so that the consumer groups have
    their partitions before the measured load starts (it is not counted in the summary)."""
    started = time.monotonic()
    async with grpc.aio.insecure_channel(target) as channel:
        response = await TransactionServiceStub(channel).CreateTransaction(
            factory.next_request(), metadata=(("x-client-id", "txguard-demo"),), timeout=10
        )
    transaction_id = response.transaction.transaction_id
    while time.monotonic() - started < timeout:
        found = store.get_transaction(transaction_id)
        if found is not None and found.HasField("decision"):
            print(f"pipeline ready: first decision after {time.monotonic() - started:.1f}s")
            return
        if not all(service.alive() for service in services):
            raise DemoError("a service exited during start-up; see its log")
        await asyncio.sleep(0.1)
    raise DemoError(f"no decision for a warm-up transaction within {timeout:.0f}s")


async def _drive(settings: Settings, options: DemoOptions, services: list[ServiceProcess]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stats = LoadStats()
    tally = DecisionTally()
    view = LiveView()
    factory = TransactionFactory(accounts=options.accounts, seed=options.seed)
    store = SqliteStore(settings.store_path)
    try:
        await _wait_until_pipeline_decides(settings.grpc_addr, factory, store, services)
        run_start_us = now_us()
        started = time.monotonic()
        load = asyncio.create_task(
            generate_load(
                settings.grpc_addr,
                factory,
                rate_per_second=options.rate_per_second,
                duration_seconds=options.duration_seconds,
                stop=stop,
                stats=stats,
            )
        )
        previous = (time.monotonic(), 0, 0)
        drain_deadline: float | None = None
        load_duration: float | None = None
        while True:
            if load.done():
                await asyncio.sleep(0.25)
            else:
                await asyncio.wait({load}, timeout=1.0)
            tally.add(applied_after(store, tally.last_applied_us, accepted_since_us=run_start_us))
            now = time.monotonic()
            decided = len(tally.decided_ids)
            span = max(now - previous[0], 1e-6)
            view.show(
                elapsed=now - started,
                accepted=stats.accepted,
                accepted_per_s=(stats.accepted - previous[1]) / span,
                decided=decided,
                decided_per_s=(decided - previous[2]) / span,
                tally=tally,
                errors=sum(stats.errors.values()),
            )
            previous = (now, stats.accepted, decided)
            crashed = [s for s in services if not s.alive()]
            if crashed:
                for service in crashed:
                    print(service.exit_report(), file=sys.stderr)
                stop.set()
                break
            if not load.done():
                continue
            if drain_deadline is None:
                load_duration = now - started
                drain_deadline = now + options.drain_timeout_seconds
                stop.clear()  # a Ctrl-C from here on abandons the wait for the last decisions
            if tally.decided_ids.issuperset(stats.accepted_ids) or stop.is_set():
                break
            if now > drain_deadline:
                break
        if not load.done():
            await load
        if load_duration is None:
            load_duration = time.monotonic() - started
    finally:
        store.close()
    missing = len(set(stats.accepted_ids) - tally.decided_ids)
    for line in summary_lines(
        accepted=stats.accepted,
        decided=len(tally.decided_ids & set(stats.accepted_ids)),
        missing=missing,
        duration=load_duration,
        tally=tally,
        api_ms=stats.api_latencies_ms,
        errors=stats.errors,
        retries=stats.retries,
    ):
        print(line)
    ok = missing == 0 and stats.accepted > 0 and all(s.alive() for s in services)
    print("RESULT: every accepted transaction has its decision" if ok else "RESULT: FAILED")
    return 0 if ok else 1
