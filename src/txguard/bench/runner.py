"""`txguard bench`: every scenario in one invocation on one machine, so that ratios hold even when
the machine is noisy. Results go to `--output` (default benchmarks/results/) as results.json,
results.md and latency-vs-load.png; targets come from benchmarks/targets.json.

Scenarios, in the order they run:
- ceiling: confluent-kafka alone, produce and consume -> produce passthrough;
- detector: the real detector on a pre-filled transactions topic (also gives `state`);
- peer: the same detection as a Quix Streams application, same input;
- scaling: 1, 2, 3 detector instances in one group on the same topic;
- e2e: load generator -> gRPC -> store -> outbox -> Kafka -> detector -> applier, after the
  same loads offered to an API that does nothing (the gRPC floor).
Everything runs in a fresh topic namespace `txguard-bench-<id>`, deleted at the end.
"""

from __future__ import annotations

import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from txguard.bench import machine
from txguard.bench.ceiling import passthrough_ceiling, produce_ceiling
from txguard.bench.detector_bench import run_detector
from txguard.bench.end_to_end import check_relay_place, run_end_to_end
from txguard.bench.grpc_floor import run_grpc_floor
from txguard.bench.kafka_io import BenchKafkaError, cluster_size, delete_topics
from txguard.bench.peer import create_peer_venv, peer_python, run_peer
from txguard.bench.reference_check import check_against_reference
from txguard.bench.report import (
    TargetsError,
    load_targets,
    target_digits,
    update_readme,
    write_report,
)
from txguard.bench.scaling import run_scaling
from txguard.bench.workload import (
    BenchError,
    Prefill,
    dataset_config,
    namespaced,
    prefill,
    train_bench_model,
)
from txguard.config import Settings
from txguard.kafka.session import KafkaUnavailable, running_kafka
from txguard.kafka.topics import TopicError

SCENARIOS = ("ceiling", "detector", "peer", "scaling", "e2e")
# Other names accepted on the command line for a scenario.
ALIASES = {"state": "detector", "end-to-end": "e2e", "passthrough": "ceiling"}
REPOSITORY = Path(__file__).resolve().parents[3]
DEFAULT_OUTPUT = REPOSITORY / "benchmarks" / "results"
TARGETS = REPOSITORY / "benchmarks" / "targets.json"
# What a failing scenario raises; it is reported and the next scenario runs.
_FAILURES = (
    BenchError,
    BenchKafkaError,
    KafkaException,
    TopicError,
    OSError,
    RuntimeError,
    ValueError,
    subprocess.SubprocessError,
)


@dataclass(frozen=True)
class BenchSizes:
    """How much each scenario does; `FULL` for the record, `SMOKE` to check the harness."""

    ceiling_records: int
    customers: int
    days: int
    scaling_instances: tuple[int, ...]
    scaling_window_seconds: float
    # None: the peer decides everything; otherwise it is stopped this long after its first.
    peer_time_limit_seconds: float | None
    e2e_fixed_rates: tuple[float, ...]
    e2e_modes: tuple[str, ...]
    e2e_fixed_seconds: float
    e2e_step_rates: tuple[float, ...]
    e2e_step_seconds: float
    e2e_step_mode: str
    drain_timeout_seconds: float
    # Each fixed e2e load offered to the no-op API (`grpc_floor`) for this long.
    grpc_floor_seconds: float
    first_decision_timeout_seconds: float = 300.0
    stall_timeout_seconds: float = 120.0
    table_timeout_seconds: float = 1800.0


FULL = BenchSizes(
    ceiling_records=1_000_000,
    # About 540,000 transactions (the handbook's 1.93 per customer and day).
    customers=5_000,
    days=56,
    scaling_instances=(1, 2, 3),
    scaling_window_seconds=45.0,
    peer_time_limit_seconds=None,
    e2e_fixed_rates=(500.0, 2_000.0, 5_000.0),
    e2e_modes=("unary", "stream", "batch"),
    e2e_fixed_seconds=20.0,
    e2e_step_rates=(
        500.0,
        1_000.0,
        1_500.0,
        2_000.0,
        2_500.0,
        3_000.0,
        3_500.0,
        4_000.0,
        5_000.0,
        7_500.0,
        10_000.0,
        15_000.0,
    ),
    e2e_step_seconds=20.0,
    e2e_step_mode="batch",
    drain_timeout_seconds=300.0,
    grpc_floor_seconds=10.0,
)

SMOKE = BenchSizes(
    ceiling_records=20_000,
    customers=2_500,
    # About 185,000 transactions: a few seconds of detector work at 50,000-70,000 a second, so
    # that its profile has samples (py-spy takes a moment to attach).
    days=40,
    scaling_instances=(2,),
    scaling_window_seconds=5.0,
    peer_time_limit_seconds=None,
    e2e_fixed_rates=(100.0,),
    e2e_modes=("unary", "stream", "batch"),
    e2e_fixed_seconds=3.0,
    e2e_step_rates=(100.0, 200.0),
    e2e_step_seconds=3.0,
    e2e_step_mode="batch",
    drain_timeout_seconds=60.0,
    grpc_floor_seconds=2.0,
    first_decision_timeout_seconds=120.0,
    stall_timeout_seconds=60.0,
    table_timeout_seconds=120.0,
)


@dataclass(frozen=True)
class BenchOptions:
    smoke: bool = False
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    output_dir: Path = DEFAULT_OUTPUT
    # Overrides the sizes `smoke` chooses.
    sizes: BenchSizes | None = None
    keep_topics: bool = False
    # Create .venv-quix when it is missing (needs the package index); smoke runs skip the peer.
    create_peer_venv: bool | None = None
    targets: Path = TARGETS
    # A README whose results block is rewritten with this run's targets table and plot.
    readme: Path | None = None
    # Where the end-to-end pipeline's outbox relay runs: one of end_to_end.RELAY_PLACES.
    relay: str = "in-process"


def resolve_scenarios(names: Sequence[str]) -> list[str]:
    """The canonical scenario names, in run order; ValueError names an unknown one."""
    wanted = set()
    for name in names:
        canonical = ALIASES.get(name.strip(), name.strip())
        if canonical not in SCENARIOS:
            raise ValueError(
                f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)} "
                f"(or {', '.join(ALIASES)})"
            )
        wanted.add(canonical)
    return [name for name in SCENARIOS if name in wanted]


def run_bench(settings: Settings, options: BenchOptions) -> int:
    """Run the chosen scenarios and write the report. Exit code 0 when every scenario ran and
    every transaction was decided exactly once (targets missed are reported, not failures),
    1 when a scenario failed, 2 for a usage mistake."""
    try:
        scenarios = resolve_scenarios(options.scenarios)
        targets = load_targets(options.targets)
        check_relay_place(options.relay)
    except (ValueError, TargetsError) as exc:
        print(f"txguard bench: {exc}", file=sys.stderr)
        return 2
    sizes = options.sizes or (SMOKE if options.smoke else FULL)
    run_id = uuid.uuid4().hex[:8]
    namespace = f"txguard-bench-{run_id}"
    work_dir = settings.home / "bench" / run_id
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": "smoke" if options.smoke else "full",
            "command": "txguard bench"
            + (" --smoke" if options.smoke else "")
            + (f" --relay {options.relay}" if options.relay != "in-process" else ""),
            "scenarios": scenarios,
            "sizes": _jsonable(sizes),
            "machine": machine.machine_facts(),
            "versions": machine.library_versions(),
            "git": machine.git_commit(REPOSITORY),
            "load_average_start": machine.load_average(),
            "namespace": namespace,
            "work_dir": str(work_dir),
        }
    }
    try:
        with running_kafka(settings) as bootstrap:
            try:
                results["meta"]["cluster_at_start"] = cluster_size(bootstrap)
            except KafkaException as exc:
                _say(f"could not count the cluster's topics: {exc}")
            bench = _Bench(
                bootstrap,
                namespaced(settings, namespace),
                sizes,
                work_dir,
                results,
                relay=options.relay,
            )
            try:
                bench.run(scenarios, options)
            finally:
                if not options.keep_topics:
                    # Quix names its changelog topics after their group, which holds the namespace.
                    delete_topics(bootstrap, lambda name: namespace in name)
    except KafkaUnavailable as exc:
        print(f"txguard bench: {exc}", file=sys.stderr)
        return 1
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    results["meta"]["load_average_end"] = machine.load_average()
    written = write_report(results, targets, options.output_dir)
    if options.readme is not None:
        update_readme(options.readme, results, options.output_dir)
        written.append(options.readme)
    _print_summary(results, written)
    failed = any(isinstance(value, dict) and "error" in value for value in results.values())
    return 1 if failed or not _decided_exactly_once(results) else 0


class _Bench:
    """One run's shared pieces: the model artifact, the pre-filled topic, and the results."""

    def __init__(
        self,
        bootstrap: str,
        settings: Settings,
        sizes: BenchSizes,
        work_dir: Path,
        results: dict[str, Any],
        *,
        relay: str = "in-process",
    ) -> None:
        self.bootstrap = bootstrap
        self.relay = relay
        self.settings = settings
        self.sizes = sizes
        self.work_dir = work_dir
        self.results = results
        self._model: Path | None = None
        self._prefill: Prefill | None = None
        # The detector's score per transaction, to check the peer computes the same.
        self._detector_scores: dict[str, float] = {}

    @property
    def model(self) -> Path:
        if self._model is None:
            _say("training the benchmark's logistic-regression model")
            self._model = train_bench_model(self.work_dir / "model")
        return self._model

    @property
    def prefilled(self) -> Prefill:
        if self._prefill is None:
            config = dataset_config(self.sizes.customers, self.sizes.days)
            _say(
                f"pre-filling {self.settings.topics.transactions} with {config.customers:,} "
                f"customers over {config.days} days, then building the terminal-risk table"
            )
            self._prefill = prefill(
                self.bootstrap,
                self.settings,
                config,
                self.work_dir / "terminal-risk",
                timeout_seconds=self.sizes.table_timeout_seconds,
            )
            self.results["prefill"] = self._prefill.describe()
        return self._prefill

    def run(self, scenarios: list[str], options: BenchOptions) -> None:
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "ceiling": self.ceiling,
            "detector": self.detector,
            "peer": lambda: self.peer(options),
            "scaling": self.scaling,
            "e2e": self.end_to_end,
        }
        keys = {"e2e": "end_to_end"}
        for name in scenarios:
            _say(f"scenario {name}")
            began = time.monotonic()
            load_before = machine.load_average()
            try:
                outcome = steps[name]()
            except _FAILURES as exc:
                outcome = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
                _say(f"scenario {name} failed: {exc}")
            outcome["scenario_seconds"] = round(time.monotonic() - began, 1)
            outcome["load_average"] = [load_before, machine.load_average()]
            self.results[keys.get(name, name)] = outcome

    def ceiling(self) -> dict[str, Any]:
        topics = self.settings.topics
        produce = produce_ceiling(
            self.bootstrap,
            f"{topics.namespace}.ceiling-in",
            self.sizes.ceiling_records,
            self.settings.topic_partitions,
        )
        _say(f"ceiling produce: {produce['throughput_per_s']:,.0f} records/s")
        passthrough = self._passthrough("ceiling-out")
        _say(f"ceiling passthrough: {passthrough['throughput_per_s']:,.0f} records/s")
        return {"produce": produce, "passthrough": passthrough}

    def _passthrough(self, target: str) -> dict[str, Any]:
        """The passthrough of the ceiling's input into `target` (a topic of this run)."""
        namespace = self.settings.topics.namespace
        return passthrough_ceiling(
            self.bootstrap,
            f"{namespace}.ceiling-in",
            f"{namespace}.{target}",
            self.sizes.ceiling_records,
            batch_size=self.settings.consume_batch_size,
        )

    def _passthrough_rate(self, after_detector: dict[str, Any] | None = None) -> float | None:
        """The ceiling of the throughput ratios: the mean of the ceiling scenario's passthrough
        and of the one run right after the detector (when both ran)."""
        after = after_detector or self.results.get("detector", {}).get("passthrough_after")
        runs = (self.results.get("ceiling", {}).get("passthrough"), after)
        rates = [run["throughput_per_s"] for run in runs if run]
        return sum(rates) / len(rates) if rates else None

    def detector(self) -> dict[str, Any]:
        result = run_detector(
            self.bootstrap,
            self.prefilled,
            self.model,
            self.work_dir,
            first_timeout=self.sizes.first_decision_timeout_seconds,
            stall_timeout=self.sizes.stall_timeout_seconds,
            scores=self._detector_scores,
        )
        if self.results.get("ceiling", {}).get("passthrough"):
            # The machine's speed drifts over minutes (other work shares its cores): measured
            # again at once, the ceiling of the ratio sees the machine as the detector did.
            result["passthrough_after"] = self._passthrough("ceiling-out-after-detector")
            _say(
                "passthrough after the detector: "
                f"{result['passthrough_after']['throughput_per_s']:,.0f} records/s"
            )
        ceiling = self._passthrough_rate(result.get("passthrough_after"))
        if ceiling:
            result["passthrough_ceiling_per_s"] = round(ceiling, 1)
            result["ratio_to_passthrough"] = round(result["throughput_per_s"] / ceiling, 3)
        _say("checking a sample of the detector's scores against the reference features")
        result["reference_check"] = check_against_reference(
            dataset_config(self.sizes.customers, self.sizes.days),
            self.settings,
            self.model,
            self._detector_scores,
        )
        stats = result.get("stop_stats", {})
        self.results["state"] = {
            "accounts": stats.get("accounts"),
            "state_bytes_per_account": stats.get("state_bytes_per_account"),
            "detector_peak_rss_mib": result["usage"].get("detector", {}).get("peak_rss_mib"),
        }
        _say(f"detector: {result['throughput_per_s']:,.0f} decisions/s")
        return result

    def peer(self, options: BenchOptions) -> dict[str, Any]:
        python = peer_python(REPOSITORY)
        create = options.create_peer_venv
        if python is None and (create if create is not None else not options.smoke):
            _say("creating .venv-quix for the Quix Streams peer")
            python = create_peer_venv(REPOSITORY)
        if python is None:
            reason = (
                f"no Quix Streams virtualenv at {REPOSITORY / '.venv-quix'} "
                "(`make bench` creates it)"
            )
            _say(f"peer skipped: {reason}")
            return {"skipped": reason}
        result = run_peer(
            self.bootstrap,
            self.prefilled,
            self.model,
            python,
            REPOSITORY,
            self.work_dir,
            first_timeout=self.sizes.first_decision_timeout_seconds,
            stall_timeout=self.sizes.stall_timeout_seconds,
            time_limit=self.sizes.peer_time_limit_seconds,
            reference_scores=self._detector_scores,
        )
        ceiling = self._passthrough_rate()
        if ceiling:
            result["ratio_to_passthrough"] = round(result["throughput_per_s"] / ceiling, 3)
        detector = self.results.get("detector", {}).get("throughput_per_s")
        if detector and result["throughput_per_s"]:
            result["detector_to_peer_ratio"] = round(detector / result["throughput_per_s"], 2)
        _say(f"quix peer: {result['throughput_per_s']:,.0f} decisions/s")
        return result

    def scaling(self) -> dict[str, Any]:
        return run_scaling(
            self.bootstrap,
            self.prefilled,
            self.model,
            self.work_dir / "scaling",
            instance_counts=self.sizes.scaling_instances,
            window_seconds=self.sizes.scaling_window_seconds,
            first_timeout=self.sizes.first_decision_timeout_seconds,
            stall_timeout=self.sizes.stall_timeout_seconds,
        )

    def end_to_end(self) -> dict[str, Any]:
        sizes = self.sizes
        _say("the gRPC floor: the end-to-end loads offered to an API that does nothing")
        floor = run_grpc_floor(
            rates=sizes.e2e_fixed_rates,
            modes=sizes.e2e_modes,
            seconds=sizes.grpc_floor_seconds,
            log_dir=self.work_dir / "grpc-floor",
        )
        result = run_end_to_end(
            self.bootstrap,
            self.settings,
            self.model,
            self.work_dir / "e2e",
            fixed_rates=sizes.e2e_fixed_rates,
            modes=sizes.e2e_modes,
            fixed_seconds=sizes.e2e_fixed_seconds,
            step_rates=sizes.e2e_step_rates,
            step_seconds=sizes.e2e_step_seconds,
            step_mode=sizes.e2e_step_mode,
            drain_timeout=sizes.drain_timeout_seconds,
            relay=self.relay,
        )
        result["grpc_floor"] = floor
        return result


def _decided_exactly_once(results: dict[str, Any]) -> bool:
    detector = results.get("detector", {})
    if "exactly_once" in detector and not detector["exactly_once"]:
        return False
    e2e = results.get("end_to_end", {})
    runs = [*e2e.get("fixed", {}).values(), *e2e.get("step_up", {}).get("steps", [])]
    return all(run["missing"] == 0 for run in runs)


def _jsonable(sizes: BenchSizes) -> dict[str, Any]:
    return {name: getattr(sizes, name) for name in sizes.__dataclass_fields__}


def _say(message: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def _print_summary(results: dict[str, Any], written: list[Path]) -> None:
    for target in results.get("targets", []):
        measured = target.get("measured")
        digits = target_digits(target)
        shown = f"{measured:,.{digits}f}" if isinstance(measured, int | float) else "-"
        print(
            f"target {target['id']}: {target['status']} (measured {shown}, wanted "
            f"{target['op']} {target['value']})"
        )
    for path in written:
        print(f"wrote {path}")
