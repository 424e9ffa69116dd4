"""The real detector (`txguard serve detector` processes) on the pre-filled transactions topic.

Throughput is counted on the decisions topic, from the first decision to the last (their
`decided_at`), so start-up (loading the terminal table, joining the group) is not counted, and
the harness reads nothing while the detector works: it only asks for end offsets.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from txguard.bench.kafka_io import Offsets, OffsetWatcher, end_offsets, read_from
from txguard.bench.logs import assignments, detector_stop_stats, revocations
from txguard.bench.machine import UsageMeter, broker_pid
from txguard.bench.profile import StackSampler
from txguard.bench.stats import rate
from txguard.bench.workload import BenchError, Prefill, service_env
from txguard.demo.processes import ServiceProcess, start_service
from txguard.schema.v1.decision_pb2 import FraudDecision

POLL_SECONDS = 0.5


@dataclass
class DecisionCount:
    """What the decisions since a baseline say: how many, for which transactions, when."""

    records: int = 0
    transactions: Counter[str] = field(default_factory=Counter)
    # The first decision's score per transaction: compares two detectors on the same input.
    scores: dict[str, float] = field(default_factory=dict)
    first_ms: int = 0
    last_ms: int = 0
    timestamps_ms: list[int] = field(default_factory=list)
    # When the first decision of each transaction was produced (its record's CreateTime, ms).
    produced_ms: dict[str, int] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        return sum(count - 1 for count in self.transactions.values() if count > 1)

    @property
    def seconds(self) -> float:
        return max(0.0, (self.last_ms - self.first_ms) / 1000)

    def throughput(self) -> float:
        return rate(self.records, self.seconds)


def count_decisions(bootstrap: str, topic: str, baseline: Offsets) -> DecisionCount:
    """Every decision since `baseline`: its transaction and its `decided_at`, the time its
    producer stamped on it (the record timestamp may be copied from the input, as Quix does)."""
    count = DecisionCount()
    for record in read_from(bootstrap, topic, baseline):
        decision = FraudDecision.FromString(record.value or b"")
        count.records += 1
        count.transactions[decision.transaction_id] += 1
        count.scores.setdefault(decision.transaction_id, decision.score)
        count.produced_ms.setdefault(decision.transaction_id, record.timestamp_ms)
        stamp = decision.decided_at
        count.timestamps_ms.append(stamp.seconds * 1000 + stamp.nanos // 1_000_000)
    if count.timestamps_ms:
        count.first_ms, count.last_ms = min(count.timestamps_ms), max(count.timestamps_ms)
    return count


def wait_for_records(
    watcher: OffsetWatcher,
    baseline: Offsets,
    expected: int,
    processes: list[ServiceProcess],
    *,
    first_timeout: float,
    stall_timeout: float,
    until: float | None = None,
) -> int:
    """Wait until `expected` records arrived since `baseline` (or the `until` wall time);
    raise BenchError when a process dies or nothing arrives for too long."""
    started = time.monotonic()
    seen = 0
    progress_at = started
    while True:
        current = watcher.records_since(baseline)
        now = time.monotonic()
        if current > seen:
            seen, progress_at = current, now
        if seen >= expected or (until is not None and time.time() >= until):
            return seen
        for process in processes:
            if not process.alive():
                raise BenchError(
                    f"{process.name} exited with code {process.process.returncode}; "
                    f"log {process.log_path}:\n{process.log_tail()}"
                )
        limit = first_timeout if seen == 0 else stall_timeout
        if now - progress_at > limit:
            raise BenchError(
                f"{watcher.topic}: {seen} of {expected} records after {now - started:.0f} s, "
                f"none for {limit:.0f} s"
            )
        time.sleep(POLL_SECONDS)


def compare_scores(
    scores: dict[str, float], reference: dict[str, float], *, tolerance: float = 1e-9
) -> dict[str, Any]:
    """How many transactions two detectors scored, and how many of them differently."""
    common = scores.keys() & reference.keys()
    differences = [abs(scores[t] - reference[t]) for t in common]
    return {
        "compared": len(common),
        "different": sum(1 for d in differences if d > tolerance),
        "max_abs_difference": max(differences, default=0.0),
    }


def usage_meter(name: str, process: ServiceProcess, bootstrap: str) -> UsageMeter:
    """A started meter on the process and, when it runs on this machine, the broker."""
    pids = {name: process.process.pid}
    broker = broker_pid(bootstrap)
    if broker is not None:
        pids["kafka-broker"] = broker
    meter = UsageMeter(pids)
    meter.start()
    return meter


def cpu_per_record(usage: dict[str, dict[str, float]], name: str, records: int) -> float | None:
    """Microseconds of CPU per record: less sensitive than a rate to other work on the machine."""
    cpu = usage.get(name, {}).get("cpu_seconds")
    return round(cpu * 1e6 / records, 1) if cpu is not None and records else None


def detector_env(bootstrap: str, prefill: Prefill, model_dir: Path, group: str) -> dict[str, str]:
    return service_env(
        bootstrap,
        prefill.settings,
        TXGUARD_DETECTOR_GROUP=group,
        # The table is complete before the detector starts: it never waits, and features are
        # those of a replay.
        TXGUARD_TERMINAL_TABLE_MAX_WAIT_MS="unbounded",
        TXGUARD_MODEL_DIR=str(model_dir),
    )


def start_detector(env: dict[str, str], log_dir: Path) -> ServiceProcess:
    return start_service("detector", env=env, log_dir=log_dir)


def run_detector(
    bootstrap: str,
    prefill: Prefill,
    model_dir: Path,
    work_dir: Path,
    *,
    first_timeout: float,
    stall_timeout: float,
    scores: dict[str, float] | None = None,
    profile_stacks: bool = True,
) -> dict[str, Any]:
    """One detector instance decides every pre-filled transaction, at full speed; `scores`
    receives each transaction's score. With `profile_stacks`, py-spy samples it meanwhile."""
    topics = prefill.settings.topics
    group = f"{topics.namespace}-detector-{uuid.uuid4().hex[:6]}"
    baseline = end_offsets(bootstrap, topics.decisions)
    log_dir = work_dir / "detector"
    detector = start_detector(detector_env(bootstrap, prefill, model_dir, group), log_dir)
    meter = usage_meter("detector", detector, bootstrap)
    sampler = StackSampler("detector", detector.process.pid, work_dir / "profiles" / "detector.txt")
    profile: dict[str, Any] = {}
    try:
        with OffsetWatcher(bootstrap, topics.decisions) as watcher:
            for expected in (1, prefill.transactions):
                wait_for_records(
                    watcher,
                    baseline,
                    expected,
                    [detector],
                    first_timeout=first_timeout,
                    stall_timeout=stall_timeout,
                )
                if expected == 1:
                    meter.mark()  # CPU from the first decision: start-up is not counted.
                    if profile_stacks:
                        sampler.start()
        usage = meter.stop()
    finally:
        if profile_stacks:
            profile = sampler.stop()
        code = detector.terminate(timeout=60)
    decisions = count_decisions(bootstrap, topics.decisions, baseline)
    if scores is not None:
        scores.update(decisions.scores)
    stats = detector_stop_stats(detector.log_path) or {}
    missing = prefill.transactions - len(decisions.transactions)
    return {
        "transactions": prefill.transactions,
        "decisions": decisions.records,
        "decided_transactions": len(decisions.transactions),
        "duplicates": decisions.duplicates,
        "missing": missing,
        "exactly_once": missing == 0 and decisions.duplicates == 0,
        "seconds_first_to_last": round(decisions.seconds, 2),
        "throughput_per_s": decisions.throughput(),
        "cpu_us_per_decision": cpu_per_record(usage, "detector", decisions.records),
        "usage": usage,
        "exit_code": code,
        "stop_stats": stats,
        "log": str(detector.log_path),
        "profile": profile,
    }


def rebalance_timings(log_paths: list[Path], started_at: list[float]) -> list[dict[str, Any]]:
    """For each instance but the one assigned first: from the first revocation another instance
    logged after this one started (its partitions checkpointed and let go) to this one's own
    assignment (state restored, about to process), and from its process start to that
    assignment. An instance never assigned is reported as such."""
    own = [assignments(path) for path in log_paths]
    assigned_at = [found[0].time if found else None for found in own]
    known = [moment for moment in assigned_at if moment is not None]
    first = assigned_at.index(min(known)) if known else None
    timings: list[dict[str, Any]] = []
    for index, found in enumerate(own):
        if index == first:
            continue
        if not found:
            timings.append({"instance": index + 1, "assigned": False})
            continue
        assigned = found[0]
        revoked = [
            moment
            for other, path in enumerate(log_paths)
            if other != index
            for moment, _parts in revocations(path)
            if started_at[index] <= moment <= assigned.time
        ]
        handover = assigned.time - min(revoked) if revoked else None
        timings.append(
            {
                "instance": index + 1,
                "assigned": True,
                "partitions": list(assigned.partitions),
                "handover_seconds": round(handover, 3) if handover is not None else None,
                "restore_seconds": assigned.restore_seconds,
                "restored_accounts": assigned.restored_accounts,
                "start_to_assigned_seconds": round(assigned.time - started_at[index], 3),
            }
        )
    return timings
