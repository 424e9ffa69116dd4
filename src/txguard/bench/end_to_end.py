"""End to end: load generator -> gRPC (unary, streaming or batched) -> store + outbox -> relay ->
Kafka -> detector -> applier -> store, every service a real `txguard serve` process.

API modes: "unary" is one CreateTransaction call per transaction, "stream" one SubmitTransactions
item per transaction over `STREAMS` streams, "batch" one SubmitTransactionBatches message every
few milliseconds holding the transactions due by then (see `generate_batched_load`).

Each run offers a fixed load for a while, then waits until every accepted transaction has its
decision applied. Latency is the store's own record: accepted (by the API) to decided (by the
detector) to applied (by the applier). The step-up offers higher and higher loads until one is
not sustained: the API falls short of the offered rate, answers with errors, or the backlog of
accepted but not yet applied transactions keeps growing through the second half of the step.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from txguard.bench.detector_bench import count_decisions
from txguard.bench.kafka_io import end_offsets
from txguard.bench.latency_hops import hop_latencies, relayed_times
from txguard.bench.machine import UsageMeter, broker_pid, own_usage, usage_between
from txguard.bench.profile import StackSampler
from txguard.bench.stats import percentiles, rate
from txguard.bench.workload import BenchError, namespaced, service_env
from txguard.clock import now_us
from txguard.config import Settings
from txguard.demo.processes import ServiceProcess, start_service, wait_for_grpc_serving
from txguard.kafka.broker import free_port
from txguard.kafka.topics import ensure_topics
from txguard.schema.v1.service_pb2 import SubmitTransactionsRequest
from txguard.simulate.load_generator import (
    LoadStats,
    PreparedRequests,
    RequestSource,
    TransactionFactory,
    generate_batched_load,
    generate_load,
    paced,
)
from txguard.transactions.client import TransactionClient

# Services in shutdown order: the API (and its relay) first, so everything accepted is published.
SERVICES = ("transactions", "detector", "terminal-risk", "applier")
# Where the outbox relay runs: inside `serve transactions` (the default deployment), or in a
# process of its own (`serve transactions --no-relay` + `serve relay`, stopped after the API).
RELAY_PLACES = ("in-process", "own-process")


def check_relay_place(relay: str) -> str:
    """`relay` if it is one of RELAY_PLACES; ValueError otherwise."""
    if relay not in RELAY_PLACES:
        raise ValueError(f"unknown relay place {relay!r}; choose from {', '.join(RELAY_PLACES)}")
    return relay


CLIENT_ID = "txguard-bench"
SAMPLE_SECONDS = 0.5
# A step is sustained when the API accepts this share of the offered load without errors, the
# backlog grows by less than this share of the offered load per second over the step's second
# half (a tolerance for batching noise), and everything is applied soon after the load stops.
SUSTAINED_ACCEPT_SHARE = 0.95
SUSTAINED_BACKLOG_GROWTH = 0.10
SUSTAINED_DRAIN_SECONDS = 2.0
SUSTAINED_DRAIN_SHARE = 0.15
STREAMS = 4
STREAM_IN_FLIGHT = 1024
MODES = ("unary", "stream", "batch")
# The offered load of the end-to-end latency target: a run of its own at it is profiled.
PROFILED_RATE = 2_000.0


@dataclass(frozen=True)
class LoadRun:
    mode: str  # one of MODES
    rate_per_second: float
    duration_seconds: float

    @property
    def name(self) -> str:
        return f"{self.mode}@{self.rate_per_second:g}"


@dataclass
class RunOutcome:
    stats: LoadStats
    load_seconds: float
    backlog: list[tuple[float, int]] = field(default_factory=list)


class Pipeline:
    """The four services of one end-to-end benchmark, on a topic namespace of their own."""

    def __init__(
        self,
        bootstrap: str,
        settings: Settings,
        model_dir: Path,
        work_dir: Path,
        *,
        relay: str = "in-process",
    ) -> None:
        self.bootstrap = bootstrap
        self.relay = check_relay_place(relay)
        self.settings = namespaced(settings, f"{settings.topics.namespace}-e2e")
        self.store_path = work_dir / "store.db"
        self.log_dir = work_dir / "logs"
        self.grpc_addr = f"127.0.0.1:{free_port()}"
        self.env = service_env(
            bootstrap,
            self.settings,
            TXGUARD_HOME=str(work_dir / "home"),
            TXGUARD_STORE_PATH=str(self.store_path),
            TXGUARD_GRPC_ADDR=self.grpc_addr,
            TXGUARD_CARD_TOKEN_KEY=secrets.token_hex(32),
            TXGUARD_MODEL_DIR=str(model_dir),
        )
        self.services: list[ServiceProcess] = []
        self.work_dir = work_dir

    @property
    def service_names(self) -> tuple[str, ...]:
        """The services in shutdown order."""
        if self.relay == "own-process":
            return (SERVICES[0], "relay", *SERVICES[1:])
        return SERVICES

    def start(self) -> None:
        ensure_topics(self.bootstrap, self.settings)
        own_relay = self.relay == "own-process"
        for name in self.service_names:
            extra_args = ("--no-relay",) if own_relay and name == "transactions" else ()
            self.services.append(
                start_service(name, env=self.env, log_dir=self.log_dir, extra_args=extra_args)
            )
        wait_for_grpc_serving(self.grpc_addr, self.services[0], timeout=120)

    def pids(self) -> dict[str, int]:
        pids = {service.name: service.process.pid for service in self.services}
        broker = broker_pid(self.bootstrap)
        if broker is not None:
            pids["kafka-broker"] = broker
        return pids

    def check_alive(self) -> None:
        for service in self.services:
            if not service.alive():
                raise BenchError(
                    f"{service.name} exited with code {service.process.returncode}; "
                    f"log {service.log_path}:\n{service.log_tail()}"
                )

    def stop(self) -> dict[str, int]:
        return {service.name: service.terminate(timeout=60) for service in self.services}


APPLIED_COUNT_SQL = "SELECT COUNT(*) FROM transactions WHERE applied_at_us >= ? AND rowid > ?"


class StoreReader:
    """Read-only view of the pipeline's store: what has been applied, and when."""

    def __init__(self, path: Path) -> None:
        # Used by one thread at a time: the counts during a load run off the event loop.
        self._db = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False
        )

    def last_rowid(self) -> int:
        """The rowid of the transaction stored last: the ones stored later have larger ones."""
        row = self._db.execute("SELECT COALESCE(MAX(rowid), 0) FROM transactions").fetchone()
        return int(row[0])

    def applied_count(self, since_us: int, after_rowid: int) -> int:
        """Transactions stored after `after_rowid` and applied at `since_us` or later.

        Counted in the index on applied_at_us alone, which holds each row's rowid: reading
        accepted_at_us instead took a lookup per row (40 ms for 65,000 rows), during which the
        load generator's event loop stood still.
        """
        row = self._db.execute(APPLIED_COUNT_SQL, (since_us, after_rowid)).fetchone()
        return int(row[0])

    def applied_rows(self, since_us: int) -> list[tuple[str, int, int, int]]:
        rows = self._db.execute(
            "SELECT transaction_id, accepted_at_us, decided_at_us, applied_at_us "
            "FROM transactions WHERE accepted_at_us >= ? AND applied_at_us IS NOT NULL",
            (since_us,),
        ).fetchall()
        return [(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def close(self) -> None:
        self._db.close()


async def submit_load(
    target: str,
    factory: RequestSource,
    *,
    rate_per_second: float,
    duration_seconds: float,
    stats: LoadStats,
    streams: int = STREAMS,
) -> None:
    """Send requests at `rate_per_second` over `streams` SubmitTransactions streams."""
    async with grpc.aio.insecure_channel(target) as channel:
        client = TransactionClient(channel, CLIENT_ID)
        calls = [client.submit() for _ in range(streams)]
        sent_at: dict[str, float] = {}
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)

        async def read(call: Any) -> None:
            async for response in call:
                started = sent_at.pop(response.request_id, None)
                slots.release()
                if started is not None:
                    stats.api_latencies_ms.append((time.perf_counter() - started) * 1000)
                if response.HasField("created"):
                    stats.accepted += 1
                    stats.accepted_ids.append(response.created.transaction.transaction_id)
                else:
                    stats.errors[f"code-{response.error.code}"] += 1

        readers = [asyncio.create_task(read(call)) for call in calls]
        async for index in paced(rate_per_second, duration_seconds):
            await slots.acquire()
            request_id = str(index)
            sent_at[request_id] = time.perf_counter()
            await calls[index % streams].write(
                SubmitTransactionsRequest(request_id=request_id, transaction=factory.next_request())
            )
            stats.sent = index + 1
        for call in calls:
            await call.done_writing()
        await asyncio.gather(*readers)


def offer_load(
    run: LoadRun, target: str, requests: RequestSource, stats: LoadStats
) -> Coroutine[Any, Any, None]:
    """The load generator of `run`'s API mode, offering its load to the API at `target`."""
    if run.mode == "stream":
        return submit_load(
            target,
            requests,
            rate_per_second=run.rate_per_second,
            duration_seconds=run.duration_seconds,
            stats=stats,
        )
    generate = generate_load if run.mode == "unary" else generate_batched_load
    return generate(
        target,
        requests,
        rate_per_second=run.rate_per_second,
        duration_seconds=run.duration_seconds,
        stop=asyncio.Event(),
        stats=stats,
        client_id=CLIENT_ID,
        max_in_flight=STREAM_IN_FLIGHT,
    )


@dataclass(frozen=True)
class RunStart:
    """Where a run begins in the store: its transactions are stored after `after_rowid` and
    accepted at `since_us` or later."""

    since_us: int
    after_rowid: int


async def _drive(
    run: LoadRun,
    target: str,
    requests: RequestSource,
    store: StoreReader,
    start: RunStart,
    check: Callable[[], None],
) -> RunOutcome:
    stats = LoadStats()
    started = time.monotonic()
    load = asyncio.create_task(offer_load(run, target, requests, stats))
    outcome = RunOutcome(stats, 0.0)
    while not load.done():
        await asyncio.wait({load}, timeout=SAMPLE_SECONDS)
        check()
        elapsed = time.monotonic() - started
        accepted = stats.accepted
        # Off the event loop: the load goes on while SQLite counts.
        applied = await asyncio.to_thread(store.applied_count, start.since_us, start.after_rowid)
        outcome.backlog.append((elapsed, accepted - applied))
    await load
    outcome.load_seconds = time.monotonic() - started
    return outcome


def _drain(
    store: StoreReader, start: RunStart, accepted: int, timeout: float, check: Callable[[], None]
) -> float | None:
    """Seconds until everything accepted is applied; None if the timeout passed first."""
    started = time.monotonic()
    while store.applied_count(start.since_us, start.after_rowid) < accepted:
        check()
        if time.monotonic() - started > timeout:
            return None
        time.sleep(SAMPLE_SECONDS)
    return time.monotonic() - started


def _backlog_growth(samples: list[tuple[float, int]]) -> float:
    """Transactions per second the backlog grew by over the second half of the samples."""
    half = samples[len(samples) // 2 :]
    if len(half) < 3:
        return 0.0
    times = np.array([t for t, _ in half])
    backlog = np.array([b for _, b in half], dtype=np.float64)
    slope, _intercept = np.polyfit(times, backlog, 1)
    return float(slope)


class EndToEnd:
    """Runs load after load on one pipeline; each run is measured from its own start."""

    def __init__(self, pipeline: Pipeline, *, drain_timeout: float, seed: int = 7) -> None:
        self.pipeline = pipeline
        self.drain_timeout = drain_timeout
        self.factory = TransactionFactory(accounts=5_000, seed=seed)
        self.store: StoreReader | None = None

    def warm_up(self, count: int = 20) -> None:
        """A few transactions through everything, so every group has its partitions."""
        run = LoadRun("unary", float(count), 1.0)
        result = self.measure(run)
        if result["missing"]:
            raise BenchError(f"warm-up: {result['missing']} of {count} transactions undecided")

    def measure(self, run: LoadRun, *, profile: bool = False) -> dict[str, Any]:
        """One load run; with `profile`, py-spy samples every service while the load runs."""
        pipeline = self.pipeline
        if self.store is None:
            self.store = StoreReader(pipeline.store_path)
        store = self.store
        # Made before the run: the load generator shares the machine with the pipeline.
        requests = PreparedRequests(
            self.factory, math.ceil(run.rate_per_second * run.duration_seconds) + 1
        )
        decisions_topic = pipeline.settings.topics.decisions
        transactions_topic = pipeline.settings.topics.transactions
        baseline = end_offsets(pipeline.bootstrap, decisions_topic)
        transactions_baseline = end_offsets(pipeline.bootstrap, transactions_topic)
        meter = UsageMeter(pipeline.pids())
        meter.start()
        samplers = [
            StackSampler(
                service.name,
                service.process.pid,
                pipeline.work_dir / "profiles" / f"{run.name}-{service.name}.txt",
            )
            for service in (pipeline.services if profile else [])
        ]
        for sampler in samplers:
            sampler.start()
        own_before = own_usage()
        start = RunStart(since_us=now_us(), after_rowid=store.last_rowid())
        try:
            outcome = asyncio.run(
                _drive(run, pipeline.grpc_addr, requests, store, start, pipeline.check_alive)
            )
        finally:
            profiles = [sampler.stop() for sampler in samplers]
        usage = meter.stop(outcome.load_seconds)
        usage["load-generator"] = usage_between(own_before, own_usage(), outcome.load_seconds)
        stats = outcome.stats
        drain = _drain(store, start, stats.accepted, self.drain_timeout, pipeline.check_alive)
        # The costs per transaction count the services' work until everything is applied (the
        # load generator's ends with the load).
        through_drain = {**meter.stop(), "load-generator": usage["load-generator"]}
        rows = store.applied_rows(start.since_us)
        applied_ids = {row[0] for row in rows}
        accepted_ids = set(stats.accepted_ids)
        decisions = count_decisions(pipeline.bootstrap, decisions_topic, baseline)
        decisions_by_id = Counter(
            {t: c for t, c in decisions.transactions.items() if t in accepted_ids}
        )
        relayed = relayed_times(pipeline.bootstrap, transactions_topic, transactions_baseline)
        accepted_us = np.array([r[1] for r in rows], dtype=np.int64)
        decided_us = np.array([r[2] for r in rows], dtype=np.int64)
        applied_us = np.array([r[3] for r in rows], dtype=np.int64)
        applied_span = float(applied_us.max() - applied_us.min()) / 1e6 if len(rows) > 1 else 0.0
        growth = _backlog_growth(outcome.backlog)
        return {
            "mode": run.mode,
            "offered_per_s": run.rate_per_second,
            "duration_seconds": round(outcome.load_seconds, 2),
            "sent": stats.sent,
            "accepted": stats.accepted,
            "accepted_per_s": rate(stats.accepted, outcome.load_seconds),
            # Batch mode: transactions per batch message, on average.
            "items_per_batch": round(stats.sent / stats.batches, 1) if stats.batches else None,
            "applied": len(applied_ids & accepted_ids),
            "applied_per_s": rate(len(rows), applied_span),
            "errors": dict(stats.errors),
            "retries": stats.retries,
            "missing": len(accepted_ids - applied_ids),
            "decisions_per_transaction_max": max(decisions_by_id.values(), default=0),
            "duplicate_decisions": sum(c - 1 for c in decisions_by_id.values() if c > 1),
            "exactly_one_applied": accepted_ids <= applied_ids,
            "drain_seconds": round(drain, 2) if drain is not None else None,
            "backlog_max": max((b for _, b in outcome.backlog), default=0),
            "backlog_growth_per_s": round(growth, 1),
            "api_ms": percentiles(stats.api_latencies_ms),
            "accepted_to_decided_ms": percentiles((decided_us - accepted_us) / 1000),
            "accepted_to_applied_ms": percentiles((applied_us - accepted_us) / 1000),
            "hops": hop_latencies(rows, relayed, decisions.produced_ms),
            "usage": usage,
            "per_transaction": per_transaction_costs(through_drain, stats.accepted),
            **({"profiles": profiles} if profiles else {}),
        }

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def per_transaction_costs(
    usage: dict[str, dict[str, float]], transactions: int
) -> dict[str, float] | None:
    """CPU (ms) and context switches per accepted transaction, summed over every process of
    the run (the local broker's too, when it runs on this machine, and the load generator's),
    and the kernel's share of the CPU."""
    if transactions <= 0:
        return None
    cpu = sum(values["cpu_seconds"] for values in usage.values())
    kernel = sum(values.get("kernel_cpu_seconds", 0.0) for values in usage.values())
    switches = sum(values.get("context_switches", 0) for values in usage.values())
    return {
        "cpu_ms": round(1000 * cpu / transactions, 3),
        "context_switches": round(switches / transactions, 1),
        "kernel_share": round(kernel / cpu, 3) if cpu > 0 else 0.0,
    }


def sustained(result: dict[str, Any]) -> bool:
    offered = float(result["offered_per_s"])
    drain = result["drain_seconds"]
    drain_limit = max(SUSTAINED_DRAIN_SECONDS, SUSTAINED_DRAIN_SHARE * result["duration_seconds"])
    return (
        not result["errors"]
        and result["accepted_per_s"] >= SUSTAINED_ACCEPT_SHARE * offered
        and result["backlog_growth_per_s"] <= SUSTAINED_BACKLOG_GROWTH * offered
        and drain is not None
        and drain <= drain_limit
    )


def run_end_to_end(
    bootstrap: str,
    settings: Settings,
    model_dir: Path,
    work_dir: Path,
    *,
    fixed_rates: tuple[float, ...],
    modes: tuple[str, ...],
    fixed_seconds: float,
    step_rates: tuple[float, ...],
    step_seconds: float,
    step_mode: str,
    drain_timeout: float,
    relay: str = "in-process",
) -> dict[str, Any]:
    unknown = sorted({*modes, step_mode} - set(MODES))
    if unknown:
        raise BenchError(f"unknown e2e API mode {', '.join(unknown)}; choose from {MODES}")
    pipeline = Pipeline(bootstrap, settings, model_dir, work_dir, relay=relay)
    bench = EndToEnd(pipeline, drain_timeout=drain_timeout)
    fixed: dict[str, Any] = {}
    profiled: dict[str, Any] = {}
    steps: list[dict[str, Any]] = []
    highest: float | None = None
    try:
        pipeline.start()
        bench.warm_up()
        for mode in modes:
            for offered in fixed_rates:
                run = LoadRun(mode, offered, fixed_seconds)
                fixed[run.name] = bench.measure(run)
        # Where the time goes is sampled in a run of its own, after the measured ones: the
        # latency target's load in the step-up's mode (or the highest fixed load there is).
        # py-spy's sampling of every service takes CPU from them, which a measured run must not
        # lose on a small machine.
        profiled_rate = PROFILED_RATE if PROFILED_RATE in fixed_rates else max(fixed_rates)
        profiled_run = LoadRun(step_mode, profiled_rate, fixed_seconds)
        profiled[profiled_run.name] = bench.measure(profiled_run, profile=True)
        for offered in step_rates:
            result = bench.measure(LoadRun(step_mode, offered, step_seconds))
            result["sustained"] = sustained(result)
            steps.append(result)
            if not result["sustained"]:
                break
            highest = offered
    finally:
        bench.close()
        codes = pipeline.stop()
    for result in fixed.values():
        result["sustained"] = sustained(result)
    return {
        "namespace": pipeline.settings.topics.namespace,
        "services": list(pipeline.service_names),
        "relay": relay,
        "fixed": fixed,
        # The profiled run: its latencies are not in the report's tables.
        "profiled": profiled,
        "step_up": {
            "mode": step_mode,
            "step_seconds": step_seconds,
            "steps": steps,
            "highest_sustainable_per_s": highest,
            "criteria": (
                f"accepted >= {SUSTAINED_ACCEPT_SHARE:.0%} of offered, no API errors, backlog "
                f"growth <= {SUSTAINED_BACKLOG_GROWTH:.0%} of offered per second over the "
                f"second half of the step, everything applied within "
                f"max({SUSTAINED_DRAIN_SECONDS:g} s, {SUSTAINED_DRAIN_SHARE:.0%} of the step) "
                "after the load stops"
            ),
        },
        "exit_codes": codes,
        "logs": str(pipeline.log_dir),
    }
