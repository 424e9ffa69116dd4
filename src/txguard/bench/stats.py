"""Summaries of measured values: latency percentiles and rates, rounded for the report."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PERCENTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("p99_9", 99.9))


def percentiles(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """count, mean, p50, p95, p99, p99.9 and max (empty input: count 0 only)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return {"count": 0}
    summary = {"count": int(data.size), "mean": round(float(data.mean()), 3)}
    for name, q in PERCENTILES:
        summary[name] = round(float(np.percentile(data, q)), 3)
    summary["max"] = round(float(data.max()), 3)
    return summary


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0
