"""`txguard simulate`: the handbook's simulated transactions into a CSV or Parquet file."""

from __future__ import annotations

import sys
import time
from datetime import date
from pathlib import Path

from txguard.simulate.dataset import DatasetError, write_dataset
from txguard.simulate.handbook import SimulationConfig, simulate, summarize


def run_simulate_command(
    output: Path,
    *,
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
    except ValueError as exc:
        print(f"txguard simulate: {exc}", file=sys.stderr)
        return 2
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
