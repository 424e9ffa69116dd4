"""The demo's live console view and closing summary."""

from __future__ import annotations

import math
import sys
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from txguard.schema.v1.decision_pb2 import Outcome
from txguard.store.sqlite import AppliedDecisionRow


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of unsorted values; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class DecisionTally:
    """Everything the demo learned from the applied decisions so far."""

    applied_ms: list[float] = field(default_factory=list)
    decided_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    decided_ids: set[str] = field(default_factory=set)
    last_applied_us: int = 0
    # (monotonic second, decisions in it) for the decided/s rate.
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=5))

    def add(self, rows: Sequence[AppliedDecisionRow]) -> None:
        for row in rows:
            if row.transaction_id in self.decided_ids:
                continue
            self.decided_ids.add(row.transaction_id)
            self.applied_ms.append((row.applied_at_us - row.accepted_at_us) / 1000)
            self.decided_ms.append((row.decided_at_us - row.accepted_at_us) / 1000)
            outcome = Outcome.Name(Outcome.ValueType(row.outcome))
            self.outcomes[outcome.removeprefix("OUTCOME_")] += 1
            self.last_applied_us = max(self.last_applied_us, row.applied_at_us)


class LiveView:
    """Redraws one status block per second on a terminal; prints plain lines otherwise."""

    def __init__(self) -> None:
        self._tty = sys.stdout.isatty()
        self._drawn_lines = 0

    def show(
        self,
        *,
        elapsed: float,
        accepted: int,
        accepted_per_s: float,
        decided: int,
        decided_per_s: float,
        tally: DecisionTally,
        errors: int,
    ) -> None:
        window = tally.applied_ms[-2000:]
        lines = [
            f"t={elapsed:6.1f}s  accepted {accepted:>8} ({accepted_per_s:7.1f}/s)  "
            f"decided {decided:>8} ({decided_per_s:7.1f}/s)  api errors {errors}",
            "  accepted->applied latency ms  "
            f"p50 {percentile(window, 50):7.1f}  p95 {percentile(window, 95):7.1f}  "
            f"p99 {percentile(window, 99):7.1f}",
            "  outcomes  " + _outcomes(tally.outcomes),
        ]
        if self._tty:
            if self._drawn_lines:
                sys.stdout.write(f"\x1b[{self._drawn_lines}F\x1b[J")
            sys.stdout.write("\n".join(lines) + "\n")
            self._drawn_lines = len(lines)
        else:
            sys.stdout.write(" | ".join(line.strip() for line in lines) + "\n")
        sys.stdout.flush()


def _outcomes(outcomes: Counter[str]) -> str:
    if not outcomes:
        return "-"
    return "  ".join(f"{name} {count}" for name, count in sorted(outcomes.items()))


def summary_lines(
    *,
    accepted: int,
    decided: int,
    missing: int,
    duration: float,
    tally: DecisionTally,
    api_ms: Sequence[float],
    errors: Counter[str],
    retries: int,
) -> list[str]:
    def pcts(values: Sequence[float]) -> str:
        return "  ".join(f"p{q:g} {percentile(values, q):.1f}" for q in (50, 95, 99, 99.9))

    return [
        "txguard demo summary",
        f"  load duration           {duration:.1f} s",
        f"  transactions accepted   {accepted}",
        f"  decisions applied       {decided}",
        f"  missing a decision      {missing}",
        f"  API errors              {sum(errors.values())} {dict(errors) if errors else ''}",
        f"  client retries          {retries}",
        f"  outcomes                {_outcomes(tally.outcomes)}",
        f"  API latency ms          {pcts(api_ms)}",
        f"  accepted->decided ms    {pcts(tally.decided_ms)}",
        f"  accepted->applied ms    {pcts(tally.applied_ms)}",
    ]
