"""The gRPC floor: the end-to-end scenario's loads offered to an API that does nothing.

The load generator of the end-to-end runs drives `noop_api` (the same grpc.aio server, every
answer fixed) in a process of its own, in each API mode at each offered load. The CPU it and
the load generator spend per transaction is what gRPC itself costs on this machine before
txguard does anything: the floor under the end-to-end runs' CPU per transaction, as the
passthrough is the ceiling over the detector's throughput.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from txguard.bench.end_to_end import LoadRun, offer_load
from txguard.bench.machine import own_usage, process_usage, usage_between
from txguard.bench.stats import percentiles, rate
from txguard.bench.workload import BenchError
from txguard.child_process import tied_command
from txguard.demo.processes import ServiceProcess, wait_for_grpc_serving
from txguard.kafka.broker import free_port
from txguard.simulate.load_generator import LoadStats, PreparedRequests, TransactionFactory

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0


def run_grpc_floor(
    *, rates: tuple[float, ...], modes: tuple[str, ...], seconds: float, log_dir: Path
) -> dict[str, Any]:
    """Per run (`mode@rate`): accepted/s, API latency, and the server's and load generator's
    CPU per transaction and share of one core. The server's output goes to `log_dir`."""
    target = f"127.0.0.1:{free_port()}"
    server = _start_server(target.rpartition(":")[2], log_dir)
    try:
        wait_for_grpc_serving(target, server, timeout=START_TIMEOUT_SECONDS)
        factory = TransactionFactory(accounts=5_000, seed=11)
        runs = {}
        for mode in modes:
            for offered in rates:
                run = LoadRun(mode, offered, seconds)
                runs[run.name] = _measure(run, target, server, factory)
        return {"server": "txguard.bench.noop_api", "runs": runs}
    finally:
        server.terminate(timeout=STOP_TIMEOUT_SECONDS)


def _start_server(port: str, log_dir: Path) -> ServiceProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "noop-api.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            tied_command([sys.executable, "-m", "txguard.bench.noop_api", port]),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return ServiceProcess("noop-api", process, log_path)


def _measure(
    run: LoadRun, target: str, server: ServiceProcess, factory: TransactionFactory
) -> dict[str, Any]:
    requests = PreparedRequests(factory, math.ceil(run.rate_per_second * run.duration_seconds) + 1)
    stats = LoadStats()
    pid = server.process.pid
    server_before = process_usage(pid)
    client_before = own_usage()
    started = time.monotonic()
    asyncio.run(offer_load(run, target, requests, stats))
    seconds = time.monotonic() - started
    server_after = process_usage(pid)
    if server_before is None or server_after is None or not server.alive():
        raise BenchError(f"during {run.name}: {server.exit_report()}")
    usage = {
        "server": usage_between(server_before, server_after, seconds),
        "load-generator": usage_between(client_before, own_usage(), seconds),
    }
    per_transaction = {
        name: round(1e6 * values["cpu_seconds"] / stats.accepted, 1) if stats.accepted else None
        for name, values in usage.items()
    }
    return {
        "mode": run.mode,
        "offered_per_s": run.rate_per_second,
        "duration_seconds": round(seconds, 2),
        "sent": stats.sent,
        "accepted": stats.accepted,
        "accepted_per_s": rate(stats.accepted, seconds),
        "errors": dict(stats.errors),
        "api_ms": percentiles(stats.api_latencies_ms),
        "usage": usage,
        "cpu_us_per_transaction": per_transaction,
    }
