"""`txguard simulate`: the handbook's simulated transactions into a file, or streamed live."""

from __future__ import annotations

import sys
import time
from datetime import date
from pathlib import Path

from txguard.config import Settings
from txguard.simulate.dataset import DatasetError, write_dataset
from txguard.simulate.handbook import SimulationConfig, simulate, summarize
from txguard.simulate.stream import StreamOptions, run_stream


def run_simulate_command(
    settings: Settings,
    output: Path | None,
    *,
    stream: bool,
    rate: float,
    duration: float | None,
    label_delay_days: float,
    customers: int,
    terminals: int,
    days: int,
    start_date: date,
    radius: float,
    seed: int,
) -> int:
    try:
        config = SimulationConfig(
            customers=customers,
            terminals=terminals,
            days=days,
            start_date=start_date,
            radius=radius,
            seed=seed,
        )
        options = (
            StreamOptions(
                rate_per_second=rate,
                duration_seconds=duration,
                label_delay_days=label_delay_days,
                config=config,
            )
            if stream
            else None
        )
    except ValueError as exc:
        print(f"txguard simulate: {exc}", file=sys.stderr)
        return 2
    if options is not None:
        return run_stream(settings, options)
    assert output is not None  # argparse requires --output or --stream
    started = time.monotonic()
    frame = simulate(config)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_dataset(frame, output)
    except DatasetError as exc:
        print(f"txguard simulate: {exc}", file=sys.stderr)
        return 2
    summary = summarize(frame)
    shares = ", ".join(
        f"scenario {code}: {share:.1%}" for code, share in sorted(summary.scenario_shares.items())
    )
    print(
        f"{summary.transactions:,} transactions, {summary.frauds:,} frauds "
        f"({summary.fraud_rate:.3%}; {shares}) from {summary.first} to {summary.last}; "
        f"wrote {output} in {time.monotonic() - started:.1f} s"
    )
    return 0
