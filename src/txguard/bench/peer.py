"""The Quix Streams peer (`benchmarks/quix_peer/app.py`) on the same pre-filled topic, broker
and machine, run from its own virtualenv and measured like the detector: from its first
decision to its last, on a decisions topic of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from txguard.bench.detector_bench import (
    compare_scores,
    count_decisions,
    cpu_per_record,
    usage_meter,
    wait_for_records,
)
from txguard.bench.kafka_io import OffsetWatcher, create_topic
from txguard.bench.workload import BenchError, Prefill
from txguard.demo.processes import ServiceProcess

PEER_APP = Path("benchmarks") / "quix_peer" / "app.py"
PEER_REQUIREMENTS = Path("benchmarks") / "quix_peer" / "requirements.txt"
PEER_VENV = Path(".venv-quix")


def peer_python(repository: Path) -> Path | None:
    """The peer virtualenv's interpreter, if the virtualenv has quixstreams installed."""
    python = repository / PEER_VENV / "bin" / "python"
    if not python.exists():
        return None
    check = subprocess.run(
        [str(python), "-c", "import quixstreams"], capture_output=True, timeout=60, check=False
    )
    return python if check.returncode == 0 else None


def create_peer_venv(repository: Path) -> Path:
    """Create `.venv-quix` with the peer's pinned requirements (needs the package index)."""
    venv = repository / PEER_VENV
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            "-r",
            str(repository / PEER_REQUIREMENTS),
        ],
        check=True,
    )
    return venv / "bin" / "python"


def quix_version(python: Path) -> str | None:
    done = subprocess.run(
        [str(python), "-c", "import quixstreams; print(quixstreams.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def run_peer(
    bootstrap: str,
    prefill: Prefill,
    model_dir: Path,
    python: Path,
    repository: Path,
    work_dir: Path,
    *,
    first_timeout: float,
    stall_timeout: float,
    time_limit: float | None,
    reference_scores: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The peer decides the pre-filled transactions (all of them, or as many as `time_limit`
    seconds after its first decision allow); with the detector's `reference_scores`, each
    transaction's score is compared with the detector's (same features, same model)."""
    settings = prefill.settings
    topics = settings.topics
    run = uuid.uuid4().hex[:6]
    output = f"{topics.namespace}.quix-peer-decisions.{run}"
    create_topic(bootstrap, output, settings.topic_partitions)
    log_dir = work_dir / "quix-peer"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "quix-peer.log"
    command = [
        str(python),
        str(repository / PEER_APP),
        "--bootstrap",
        bootstrap,
        "--input",
        topics.transactions,
        "--table",
        topics.terminal_risk,
        "--output",
        output,
        "--group",
        f"{topics.namespace}-quix-peer-{run}",
        "--state-dir",
        str(work_dir / "quix-peer" / "state"),
        "--model",
        str(model_dir),
        "--schema-path",
        str(repository / "src"),
        "--amount-threshold-minor",
        str(settings.amount_threshold_minor),
        "--velocity-window-seconds",
        str(settings.velocity_window_seconds),
        "--velocity-max-transactions",
        str(settings.velocity_max_transactions),
        "--review-threshold",
        str(settings.review_threshold),
        "--decline-threshold",
        str(settings.decline_threshold),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TXGUARD_", "VIRTUAL_ENV"))}
    env["PYTHONUNBUFFERED"] = "1"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    peer = ServiceProcess("quix-peer", process, log_path)
    meter = usage_meter("quix-peer", peer, bootstrap)
    baseline = dict.fromkeys(range(settings.topic_partitions), 0)
    try:
        with OffsetWatcher(bootstrap, output) as watcher:
            wait_for_records(
                watcher,
                baseline,
                1,
                [peer],
                first_timeout=first_timeout,
                stall_timeout=stall_timeout,
            )
            meter.mark()  # CPU from the first decision: start-up is not counted.
            until = time.time() + time_limit if time_limit is not None else None
            wait_for_records(
                watcher,
                baseline,
                prefill.transactions,
                [peer],
                first_timeout=first_timeout,
                stall_timeout=stall_timeout,
                until=until,
            )
        usage = meter.stop()
    except BenchError:
        peer.terminate(timeout=60)
        raise
    code = peer.terminate(timeout=60)
    decisions = count_decisions(bootstrap, output, baseline)
    complete = len(decisions.transactions) >= prefill.transactions
    checked = compare_scores(decisions.scores, reference_scores) if reference_scores else None
    return {
        "same_scores_as_detector": checked,
        "transactions": prefill.transactions,
        "decisions": decisions.records,
        "decided_transactions": len(decisions.transactions),
        "duplicates": decisions.duplicates,
        "complete": complete,
        "seconds_first_to_last": round(decisions.seconds, 2),
        "throughput_per_s": decisions.throughput(),
        "cpu_us_per_decision": cpu_per_record(usage, "quix-peer", decisions.records),
        "usage": usage,
        "exit_code": code,
        "quixstreams": quix_version(python),
        "log": str(log_path),
    }
