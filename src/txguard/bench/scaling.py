"""1, 2, 3 ... detector instances in one group: throughput once the group is complete, and how
long each added instance took to take over its partitions.

Each count runs in a fresh group (empty state) on a copy of the pre-filled input that no detector
can read until every instance has its partitions (`GatedInput`): all of them then start on the
whole input at the same moment, and throughput is measured from that moment over a window of
`window_seconds` (or until every transaction is decided). The first instance assigned still gets
every partition and hands some over as the others join, which is the handover the table reports
(its partitions revoked, to the newcomer's assignment); with the input held back, nothing is
decided meanwhile.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from txguard.bench.detector_bench import (
    count_decisions,
    detector_env,
    rebalance_timings,
    start_detector,
    wait_for_records,
)
from txguard.bench.gated_input import GatedInput
from txguard.bench.kafka_io import OffsetWatcher, end_offsets
from txguard.bench.logs import assignments, detector_stop_stats
from txguard.bench.machine import UsageMeter, broker_pid
from txguard.bench.stats import rate
from txguard.bench.workload import BenchError, Prefill, namespaced
from txguard.demo.processes import ServiceProcess

ASSIGN_TIMEOUT_SECONDS = 180.0


def run_scaling(
    bootstrap: str,
    prefill: Prefill,
    model_dir: Path,
    work_dir: Path,
    *,
    instance_counts: tuple[int, ...],
    window_seconds: float,
    first_timeout: float,
    stall_timeout: float,
) -> dict[str, Any]:
    runs = {
        str(count): _scale_run(
            bootstrap,
            prefill,
            model_dir,
            work_dir / f"instances-{count}",
            count,
            window_seconds=window_seconds,
            first_timeout=first_timeout,
            stall_timeout=stall_timeout,
        )
        for count in instance_counts
    }
    base = runs.get("1", {}).get("throughput_per_s")
    for run in runs.values():
        if base and run.get("throughput_per_s"):
            run["speedup_vs_1"] = round(run["throughput_per_s"] / base, 2)
    return {"window_seconds": window_seconds, "runs": runs}


def _scale_run(
    bootstrap: str,
    prefill: Prefill,
    model_dir: Path,
    work_dir: Path,
    count: int,
    *,
    window_seconds: float,
    first_timeout: float,
    stall_timeout: float,
) -> dict[str, Any]:
    source = prefill.settings
    settings = namespaced(source, f"{source.topics.namespace}-scale{count}")
    topics = settings.topics
    group = f"{topics.namespace}-{uuid.uuid4().hex[:6]}"
    env = detector_env(bootstrap, replace(prefill, settings=settings), model_dir, group)
    instances: list[ServiceProcess] = []
    started_at: list[float] = []
    with GatedInput(bootstrap, source, settings) as gate:
        gate.fill()
        # The topic holds the replay's watermarks too: what is decided is its transactions.
        expected = prefill.transactions
        baseline = end_offsets(bootstrap, topics.decisions)
        try:
            with OffsetWatcher(bootstrap, topics.decisions) as watcher:
                for index in range(count):
                    started_at.append(time.time())
                    instances.append(start_detector(env, work_dir / f"instance-{index + 1}"))
                for instance in instances:
                    _wait_assigned(instance)
                # Nothing is decided yet: the input is still held back.
                decided_before_release = watcher.records_since(baseline)
                gate.release()
                complete_at = time.time()
                left_at_complete = expected - watcher.records_since(baseline)
                pids = {f"detector-{i + 1}": p.process.pid for i, p in enumerate(instances)}
                broker = broker_pid(bootstrap)
                if broker is not None:
                    pids["kafka-broker"] = broker
                meter = UsageMeter(pids)
                meter.start()
                wait_for_records(
                    watcher,
                    baseline,
                    expected,
                    instances,
                    first_timeout=first_timeout,
                    stall_timeout=stall_timeout,
                    until=complete_at + window_seconds,
                )
                ended_at = time.time()
                usage = meter.stop(ended_at - complete_at)
        finally:
            codes = [instance.terminate(timeout=60) for instance in instances]
    decisions = count_decisions(bootstrap, topics.decisions, baseline)
    start_ms, end_ms = int(complete_at * 1000), int(ended_at * 1000)
    in_window = [t for t in decisions.timestamps_ms if start_ms <= t <= end_ms]
    seconds = (min(end_ms, max(in_window)) - start_ms) / 1000 if in_window else 0.0
    states = [detector_stop_stats(p.log_path) or {} for p in instances]
    return {
        "instances": count,
        # Transactions not yet decided when the input was released: all of them.
        "undecided_at_complete": max(0, left_at_complete),
        "decided_before_release": decided_before_release,
        "decisions_in_window": len(in_window),
        "window_seconds": round(seconds, 2),
        "throughput_per_s": rate(len(in_window), seconds) if in_window else None,
        "decisions_total": decisions.records,
        "duplicates": decisions.duplicates,
        "rebalances": rebalance_timings([p.log_path for p in instances], started_at),
        "usage": usage,
        "exit_codes": codes,
        "accounts_per_instance": [s.get("accounts") for s in states],
        "state_bytes_per_account": [s.get("state_bytes_per_account") for s in states],
    }


def _wait_assigned(instance: ServiceProcess) -> None:
    deadline = time.monotonic() + ASSIGN_TIMEOUT_SECONDS
    while not assignments(instance.log_path):
        if not instance.alive():
            raise BenchError(f"detector exited while joining:\n{instance.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(
                f"detector got no partitions within {ASSIGN_TIMEOUT_SECONDS:.0f} s; "
                f"log {instance.log_path}"
            )
        time.sleep(0.2)
