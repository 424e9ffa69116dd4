"""The benchmark's output: results.json, a Markdown report with every table, the targets (data in
benchmarks/targets.json) met or not with the measured gap, and a plot of latency against load."""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from txguard.bench.latency_hops import HOPS

log = logging.getLogger(__name__)

RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"
LATENCY_PLOT = "latency-vs-load.png"
_PERCENTILE_LABELS = (("p50", "p50"), ("p95", "p95"), ("p99", "p99"), ("p99_9", "p99.9"))


class TargetsError(ValueError):
    """benchmarks/targets.json is missing or malformed."""


def load_targets(path: Path) -> list[dict[str, Any]]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TargetsError(f"cannot read targets {path}: {exc}") from exc
    targets = payload.get("targets") if isinstance(payload, dict) else None
    if not isinstance(targets, list):
        raise TargetsError(f"{path}: expected an object with a list `targets`")
    for target in targets:
        missing = {"id", "metric", "op", "value"} - set(target)
        if missing or target["op"] not in ("<=", ">="):
            raise TargetsError(f"{path}: target {target.get('id')!r} needs id, metric, op, value")
    return targets


def lookup(results: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (keys may contain '@'), or None when any part is absent."""
    value: Any = results
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def evaluate_targets(
    results: Mapping[str, Any], targets: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Each target with the measured value, met / not met / not measured, and the gap."""
    evaluated: list[dict[str, Any]] = []
    for target in targets:
        measured = lookup(results, str(target["metric"]))
        wanted = float(target["value"])
        entry: dict[str, Any] = {**target, "measured": measured}
        if not isinstance(measured, int | float):
            entry.update(status="not measured", gap=None)
        else:
            # Positive gap: how far the measurement is from meeting the target.
            gap = measured - wanted if target["op"] == "<=" else wanted - measured
            met = gap <= 0
            entry.update(
                status="met" if met else "not met",
                gap=round(gap, 3),
                measured_over_target=round(measured / wanted, 3) if wanted else None,
            )
        evaluated.append(entry)
    return evaluated


def write_report(
    results: dict[str, Any], targets: Sequence[Mapping[str, Any]], output_dir: Path
) -> list[Path]:
    """results.json, results.md and (with matplotlib) the latency plot; returns their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    results["targets"] = evaluate_targets(results, targets)
    written = []
    plot = output_dir / LATENCY_PLOT
    if plot_latency(results, plot):
        results["plot"] = plot.name
        written.append(plot)
    json_path = output_dir / RESULTS_JSON
    json_path.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    markdown_path = output_dir / RESULTS_MARKDOWN
    markdown_path.write_text(markdown(results))
    return [json_path, markdown_path, *written]


README_BEGIN = "<!-- txguard bench: latest results (written by `txguard bench --readme`) -->"
README_END = "<!-- end of txguard bench results -->"


class ReadmeError(ValueError):
    """The README has no (or a broken) block for the benchmark's results."""


def update_readme(readme: Path, results: Mapping[str, Any], results_dir: Path) -> None:
    """Replace the README's results block with this run's targets table and latency plot.

    Paths in the block are relative to the README, so that it shows the committed files.
    """
    text = readme.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ReadmeError(
            f"{readme} has no results block: put the lines {README_BEGIN!r} and {README_END!r} "
            "where the results belong"
        )
    meta = results.get("meta", {})
    machine = meta.get("machine", {})
    where = os.path.relpath(results_dir, readme.parent)
    block = [
        README_BEGIN,
        "",
        f"Run {meta.get('started_at', '-')} (`{meta.get('command', 'txguard bench')}`, "
        f"commit {str(meta.get('git', {}).get('commit', '-'))[:12]}) on "
        f"{machine.get('cpu_model', '-')}, {machine.get('cpu_cores', '-')} cores, broker and "
        f"every service on the same machine. Full results: [{where}/{RESULTS_MARKDOWN}]"
        f"({where}/{RESULTS_MARKDOWN}).",
        "",
        *_targets_section(results.get("targets", []))[2:],
    ]
    if results.get("plot"):
        block += [f"![latency against offered load]({where}/{results['plot']})", ""]
    block.append(README_END)
    readme.write_text(text[:begin] + "\n".join(block) + text[end + len(README_END) :])


# -- Markdown -------------------------------------------------------------------------------


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        # + 0.0 turns a negative value that rounds to zero into 0.0, not "-0.0".
        return f"{round(value, digits) + 0.0:,.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _usage_cells(usage: Mapping[str, Mapping[str, float]] | None) -> str:
    if not usage:
        return "-"
    return "; ".join(
        f"{name} {values.get('cpu_percent', 0):.0f}% / {values.get('peak_rss_mib', 0):.0f} MiB"
        for name, values in usage.items()
    )


def markdown(results: Mapping[str, Any]) -> str:
    meta = results.get("meta", {})
    machine = meta.get("machine", {})
    cluster = meta.get("cluster_at_start", {})
    lines = [
        "# txguard benchmark",
        "",
        f"- run: {meta.get('started_at', '-')} ({meta.get('mode', '-')} sizes), "
        f"{_n(meta.get('seconds'))} s; command: `{meta.get('command', 'txguard bench')}`",
        f"- commit: {meta.get('git', {}).get('commit', '-')}"
        + (" (with uncommitted changes)" if meta.get("git", {}).get("dirty") else ""),
        f"- machine: {machine.get('cpu_model', '-')}, {machine.get('cpu_cores', '-')} cores, "
        f"{_n(machine.get('memory_mib'))} MiB; Linux {machine.get('kernel', '-')}, "
        f"Python {machine.get('python', '-')}; a wake-up round trip between two processes "
        f"(one byte over pipes, there and back) takes {_n(machine.get('wake_up_round_trip_us'), 1)}"
        " µs",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(meta.get("versions", {}).items())),
        f"- load average (1 min) at start / end: {meta.get('load_average_start', '-')} / "
        f"{meta.get('load_average_end', '-')} (other work on the machine shares its cores)",
        f"- Kafka cluster at start: {_n(cluster.get('topics'))} topics, "
        f"{_n(cluster.get('partitions'))} partitions (topics left by other runs cost a "
        "co-located broker CPU too)",
        "",
    ]
    if meta.get("mode") == "smoke":
        lines += ["Smoke sizes: the numbers show the harness works, not what txguard can do.", ""]
    lines += _targets_section(results.get("targets", []))
    lines += _throughput_section(results)
    lines += _scaling_section(results.get("scaling"))
    lines += _end_to_end_section(results.get("end_to_end"))
    lines += _profiles_section(results)
    errors = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    if errors:
        lines += ["## Scenarios that failed", ""]
        lines += [f"- {name}: {message}" for name, message in errors.items()] + [""]
    return "\n".join(lines)


def target_digits(target: Mapping[str, Any]) -> int:
    """Decimal places a target's measurement and gap are shown with."""
    return 3 if target.get("unit") == "ratio" else 2


def _targets_section(targets: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for target in targets:
        op = "≤" if target["op"] == "<=" else "≥"
        # A ratio to three places: at two, 0.496 would read as the 0.50 it falls short of.
        digits = target_digits(target)
        rows.append(
            (
                target.get("description", target["id"]),
                f"{op} {_n(target['value'], 2 if target.get('unit') == 'ratio' else 0)} "
                f"{target.get('unit', '')}",
                _n(target.get("measured"), digits),
                target["status"],
                "-" if target.get("gap") is None else _n(target["gap"], digits),
            )
        )
    header = ("target", "wanted", "measured", "result", "gap (to meet it)")
    return ["## Targets", "", *_table(header, rows)]


def _throughput_section(results: Mapping[str, Any]) -> list[str]:
    ceiling = results.get("ceiling") or {}
    detector = results.get("detector") or {}
    peer = results.get("peer") or {}
    rows = []
    produce = ceiling.get("produce")
    if produce:
        rows.append(
            (
                "ceiling: produce (idempotent, acks=all, lz4)",
                _n(produce["records"]),
                _n(produce["throughput_per_s"]),
                "-",
                _n(produce.get("cpu_us_per_record"), 1),
                f"harness {produce['cpu_percent']:.0f}%",
                "-",
            )
        )
    passthrough_ceiling = detector.get("passthrough_ceiling_per_s")
    for what, passthrough in (
        ("ceiling: consume -> produce passthrough", ceiling.get("passthrough")),
        ("the same passthrough again, right after the detector", detector.get("passthrough_after")),
    ):
        if not passthrough:
            continue
        share = (
            passthrough["throughput_per_s"] / passthrough_ceiling if passthrough_ceiling else 1.0
        )
        rows.append(
            (
                f"{what} (batches of {passthrough['batch_size']})",
                _n(passthrough["records"]),
                _n(passthrough["throughput_per_s"]),
                f"{share:.3f}",
                _n(passthrough.get("cpu_us_per_record"), 1),
                f"harness {passthrough['cpu_percent']:.0f}%",
                "-",
            )
        )
    if "throughput_per_s" in detector:
        rows.append(
            (
                "txguard detector (1 process)",
                _n(detector["decisions"]),
                _n(detector["throughput_per_s"]),
                _n(detector.get("ratio_to_passthrough"), 3),
                _n(detector.get("cpu_us_per_decision"), 1),
                _usage_cells(detector.get("usage")),
                _n(detector.get("exactly_once")),
            )
        )
    if "throughput_per_s" in peer:
        rows.append(
            (
                f"Quix Streams {peer.get('quixstreams', '')} peer (1 process)"
                + ("" if peer.get("complete") else ", time-limited"),
                _n(peer["decisions"]),
                _n(peer["throughput_per_s"]),
                _n(peer.get("ratio_to_passthrough"), 3),
                _n(peer.get("cpu_us_per_decision"), 1),
                _usage_cells(peer.get("usage")),
                _n(peer["complete"] and peer["duplicates"] == 0),
            )
        )
    lines: list[str] = []
    if rows:
        lines += ["## Throughput: ceiling, detector, peer", ""]
        lines += _table(
            (
                "what",
                "records",
                "records/s",
                "share of passthrough",
                "CPU µs per record",
                "CPU (of one core) / peak RSS, from the first record",
                "each decided once",
            ),
            rows,
        )
        if detector.get("passthrough_after") and passthrough_ceiling:
            lines += [
                "The share of passthrough is of the mean of the two passthrough runs "
                f"({_n(passthrough_ceiling)} records/s): the machine's speed drifts over minutes, "
                "and the second run sees it as the detector did.",
                "",
            ]
        if "detector_to_peer_ratio" in peer:
            lines += [f"Detector / peer throughput: {peer['detector_to_peer_ratio']:.2f}.", ""]
        check = peer.get("same_scores_as_detector")
        if check:
            same = check["compared"] - check["different"]
            lines += [
                f"Same features and model: the peer gave {_n(same)} of the {_n(check['compared'])} "
                "transactions both decided the detector's score (within 1e-9; largest difference "
                f"{check['max_abs_difference']:.2g}).",
                "",
            ]
    reference = detector.get("reference_check")
    if reference and "error" in reference:
        lines += [f"Reference check not made: {reference['error']}", ""]
    elif reference:
        lines += [
            f"Against the reference implementation: {_n(reference['sampled'])} random "
            "transactions scored from the batch reference features (pandas) with the same model "
            f"and rules; {_n(reference['compared'] - reference['different'])} of "
            f"{_n(reference['compared'])} equal the detector's score within "
            f"{reference['tolerance']:g} (largest difference {reference['max_difference']:.2g}), "
            f"{_n(reference['missing'])} not decided.",
            "",
        ]
    for name, scenario in (("peer", peer), ("detector", detector)):
        if "skipped" in scenario:
            lines += [f"The {name} scenario was skipped: {scenario['skipped']}", ""]
    prefill = results.get("prefill")
    if prefill:
        lines += [
            f"Input: {_n(prefill['transactions'])} simulated transactions of "
            f"{_n(prefill['accounts'])} accounts with {_n(prefill['labels'])} fraud labels, "
            f"{prefill['partitions']} partitions; terminal-risk table built by the aggregator in "
            f"{_n(prefill['terminal_risk_seconds'], 1)} s before any detector started.",
            "",
        ]
    state = results.get("state")
    if state:
        lines += ["## Detector state", ""]
        lines += _table(
            ("accounts in memory", "state bytes per account", "detector peak RSS (MiB)"),
            [
                (
                    _n(state.get("accounts")),
                    _n(state.get("state_bytes_per_account")),
                    _n(state.get("detector_peak_rss_mib"), 1),
                )
            ],
        )
    return lines


def _scaling_section(scaling: Mapping[str, Any] | None) -> list[str]:
    if not scaling or "runs" not in scaling:
        return []
    rows = []
    for run in scaling["runs"].values():
        handovers = [r.get("handover_seconds") for r in run.get("rebalances", [])]
        restores = [r.get("restore_seconds") for r in run.get("rebalances", [])]
        rows.append(
            (
                run["instances"],
                _n(run.get("throughput_per_s")),
                _n(run.get("speedup_vs_1"), 2),
                ", ".join(_n(h, 2) for h in handovers) or "-",
                ", ".join(_n(r, 2) for r in restores) or "-",
                _n(run.get("duplicates")),
                _usage_cells(run.get("usage")),
            )
        )
    header = (
        "instances",
        "records/s (group complete)",
        "speedup",
        "handover s (revoke to assigned)",
        "state restore s",
        "duplicate decisions",
        "CPU / peak RSS",
    )
    notes = [
        f"- {run['instances']} instances: every transaction was decided before the group was "
        "complete, so there is no throughput of the complete group to show."
        for run in scaling["runs"].values()
        if run.get("throughput_per_s") is None and run.get("undecided_at_complete") == 0
    ]
    method = (
        "The instances of a run start together in a new group, on a copy of the input held back "
        "in an open Kafka transaction until every instance has its partitions; then all start "
        "on the whole input at once. Throughput counts the decisions from that moment until all "
        "are decided (or the window ends). Handover, for each instance but the first assigned: "
        "from the first revocation another instance logged after this one started to this "
        "one's assignment."
    )
    lines = ["## Scaling: detector instances in one group", "", method, "", *_table(header, rows)]
    return [*lines, "", *notes] if notes else lines


def _latency_row(name: str, run: Mapping[str, Any]) -> tuple[Any, ...]:
    latency = run.get("accepted_to_applied_ms", {})
    return (
        name,
        _n(run["offered_per_s"]),
        _n(run["accepted_per_s"]),
        _n(run["applied_per_s"]),
        *(_n(latency.get(key), 1) for key, _ in _PERCENTILE_LABELS),
        _n(run.get("api_ms", {}).get("p99"), 1),
        f"{run['missing']} / {run['duplicate_decisions']}",
        _n(run.get("sustained")),
    )


def _deployment_line(e2e: Mapping[str, Any]) -> str:
    where = (
        "in a process of its own (`serve relay`, beside `serve transactions --no-relay`)"
        if e2e.get("relay") == "own-process"
        else "inside `serve transactions`"
    )
    services = ", ".join(e2e.get("services", []))
    return f"Services: {services}. The outbox relay runs {where}."


def _end_to_end_section(e2e: Mapping[str, Any] | None) -> list[str]:
    if not e2e or "fixed" not in e2e:
        return []
    header = (
        "run",
        "offered/s",
        "accepted/s",
        "applied/s",
        *(f"{label} ms" for _, label in _PERCENTILE_LABELS),
        "API p99 ms",
        "missing / duplicate decisions",
        "sustained",
    )
    lines = ["## End to end: accepted -> decision applied", "", _deployment_line(e2e), ""]
    lines += _table(header, [_latency_row(name, run) for name, run in e2e["fixed"].items()])
    lines += _hops_section(e2e["fixed"])
    step_up = e2e.get("step_up", {})
    if step_up.get("steps"):
        lines += [
            f"### Step-up ({step_up['mode']} API, {step_up['step_seconds']:g} s per step)",
            "",
            f"Highest sustainable load: {_n(step_up.get('highest_sustainable_per_s'))} tx/s. "
            f"Sustained means: {step_up.get('criteria', '-')}.",
            "",
        ]
        lines += _table(
            header,
            [_latency_row(f"step {i + 1}", run) for i, run in enumerate(step_up["steps"])],
        )
    lines += [
        "### CPU per transaction, and CPU (share of one core) and peak RSS per process, per run",
        "",
        "CPU per transaction and context switches per transaction: summed over every process "
        "of the run from the start of the load until everything accepted is applied (the local "
        "broker included, and the load generator until the load ends), divided by the "
        "transactions accepted; context switches are counted for the threads alive at the end. "
        "Kernel share: the part of that CPU spent in the kernel (system time). CPU share and "
        "peak RSS per process: over the load only.",
        "",
    ]
    runs = {**e2e["fixed"], **{f"step {i + 1}": r for i, r in enumerate(step_up.get("steps", []))}}
    lines += _table(
        (
            "run",
            "CPU ms per transaction",
            "context switches per transaction",
            "kernel share",
            "processes",
        ),
        [_cost_row(name, run) for name, run in runs.items()],
    )
    return lines + _grpc_floor_section(e2e.get("grpc_floor"), e2e["fixed"])


def _grpc_floor_section(
    floor: Mapping[str, Any] | None, pipeline_runs: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    if not floor or not floor.get("runs"):
        return []
    lines = [
        "### The gRPC floor: the same loads, answered by an API that does nothing",
        "",
        "The same load generator offered the same loads to `txguard.bench.noop_api`: the same "
        "grpc.aio server as the API, every transaction answered at once with a fixed answer of "
        "the real size, nothing validated, stored or published. Its CPU per transaction is what "
        "gRPC costs on this machine before txguard does any work (measured with nothing else "
        "running, before the pipeline started: a server woken for every request spends more per "
        "request than one that finds several waiting). Last column: that floor (server and load "
        "generator) as a share of the end-to-end run's CPU per transaction.",
        "",
    ]
    header = (
        "run",
        "accepted/s",
        "API p50 / p99 ms",
        "server CPU µs per transaction (share of one core)",
        "load generator CPU µs per transaction (share of one core)",
        "share of the end-to-end run's CPU per transaction",
    )
    rows = []
    for name, run in floor["runs"].items():
        per_transaction = run.get("cpu_us_per_transaction", {})
        usage = run.get("usage", {})
        processes = ("server", "load-generator")
        cells = [
            f"{_n(per_transaction.get(process), 1)} "
            f"({_n(usage.get(process, {}).get('cpu_percent'))}%)"
            for process in processes
        ]
        floor_us = sum(per_transaction.get(process) or 0.0 for process in processes)
        pipeline_ms = (pipeline_runs.get(name, {}).get("per_transaction") or {}).get("cpu_ms")
        share = f"{floor_us / (1000 * pipeline_ms):.0%}" if pipeline_ms else "-"
        rows.append((name, _n(run["accepted_per_s"]), _p50_p99(run.get("api_ms")), *cells, share))
    return [*lines, *_table(header, rows)]


def _hops_section(runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    measured = {name: run["hops"] for name, run in runs.items() if run.get("hops")}
    if not measured:
        return []
    lines = [
        "### Latency by hop, p50 / p99 ms",
        "",
        "Each transaction's latency split where its records entered Kafka: accepted by the API "
        "-> relayed (the outbox relay produced its transaction record) -> decided by the "
        "detector -> its decision produced -> applied to the store. The times of the two "
        "records are their Kafka CreateTime, in whole milliseconds, so a hop next to one is "
        "exact to 1 ms. Percentiles of one hop and of another come from different "
        "transactions: they do not add up to the total's.",
        "",
    ]
    header = ("run", "transactions", *(label for _, label in HOPS))
    rows = [
        (
            name,
            _n(hops.get("transactions")),
            *(_p50_p99(hops.get(key)) for key, _ in HOPS),
        )
        for name, hops in measured.items()
    ]
    return [*lines, *_table(header, rows)]


def _p50_p99(summary: Mapping[str, Any] | None) -> str:
    if not summary or not summary.get("count"):
        return "-"
    return f"{_n(summary.get('p50'), 1)} / {_n(summary.get('p99'), 1)}"


def _cost_row(name: str, run: Mapping[str, Any]) -> tuple[str, ...]:
    costs = run.get("per_transaction") or {}
    share = costs.get("kernel_share")
    return (
        name,
        _n(costs.get("cpu_ms"), 2),
        _n(costs.get("context_switches"), 1),
        "-" if share is None else f"{share:.0%}",
        _usage_cells(run.get("usage")),
    )


# -- plot ------------------------------------------------------------------------------------


def profiles(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Every stack profile taken, with where: (scenario or run name, profile)."""
    found: list[tuple[str, Mapping[str, Any]]] = []

    def visit(name: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                if key == "profile" and isinstance(inner, Mapping) and inner:
                    found.append((name, inner))
                elif key == "profiles" and isinstance(inner, list):
                    found.extend((name, item) for item in inner if isinstance(item, Mapping))
                else:
                    visit(str(key) if name == "" else f"{name} / {key}", inner)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                label = item.get("name") if isinstance(item, Mapping) else None
                visit(f"{name} / {label or index}", item)

    visit("", {k: v for k, v in results.items() if k not in ("meta", "targets")})
    return found


def _profiles_section(results: Mapping[str, Any]) -> list[str]:
    """The stack profiles: which functions the sampled processes spent their time in."""
    taken = profiles(results)
    if not taken:
        return []
    lines = [
        "## Where the time goes",
        "",
        "py-spy samples of each process while the scenario ran (100 per second, the process never"
        " paused). Inclusive: share of samples whose stack passes through the function (txguard's"
        " own functions, without the entry points and loops in 95% or more of the samples);"
        " self: share in which it is the innermost frame (any code, C extensions show as their"
        " Python caller's line).",
        "",
    ]
    for where, profile in taken:
        name = f"{where}: {profile.get('process', '-')}"
        if "error" in profile:
            lines += [f"### {name}", "", f"No profile: {profile['error']}", ""]
            continue
        lines += [f"### {name} ({_n(profile.get('samples'))} samples)", ""]
        inclusive = profile.get("inclusive", [])
        innermost = profile.get("self", [])
        rows = []
        for index in range(max(len(inclusive), len(innermost))):
            left = inclusive[index] if index < len(inclusive) else None
            right = innermost[index] if index < len(innermost) else None
            rows.append(
                (
                    f"{left['share']:.1%} `{left['function']}`" if left else "",
                    f"{right['share']:.1%} `{right['function']}`" if right else "",
                )
            )
        lines += _table(("inclusive", "self"), rows)
    return lines


def plot_latency(results: Mapping[str, Any], path: Path) -> bool:
    """Latency percentiles (accepted -> applied) against offered load, one panel per API mode:
    fixed-load runs as solid lines, step-up steps dashed. False without data or without
    matplotlib (the optional `bench` extra)."""
    e2e = results.get("end_to_end") or {}
    kinds = (
        ("fixed load", "-", "o", list(e2e.get("fixed", {}).values())),
        ("step-up", "--", "s", list(e2e.get("step_up", {}).get("steps", []))),
    )
    modes = sorted(
        {
            run["mode"]
            for _, _, _, runs in kinds
            for run in runs
            if run.get("accepted_to_applied_ms", {}).get("count")
        }
    )
    if not modes:
        return False
    try:
        # By name: matplotlib is optional (the `bench` extra) and type checks must not need it.
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        log.warning("matplotlib is not installed (the `bench` extra): no latency plot")
        return False
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    figure, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.8), squeeze=False)
    for axis, mode in zip(axes[0], modes, strict=True):
        for kind, style, marker, runs in kinds:
            points = sorted(
                (run["offered_per_s"], run["accepted_to_applied_ms"])
                for run in runs
                if run["mode"] == mode and run.get("accepted_to_applied_ms", {}).get("count")
            )
            if not points:
                continue
            for (key, label), color in zip(_PERCENTILE_LABELS, colors, strict=True):
                axis.plot(
                    [load for load, _ in points],
                    [latency[key] for _, latency in points],
                    linestyle=style,
                    marker=marker,
                    color=color,
                    label=f"{label} ({kind})",
                )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("offered load (transactions/s)")
        axis.set_ylabel("accepted -> decision applied (ms)")
        axis.set_title(f"{mode} API")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle("txguard end-to-end latency against offered load")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
