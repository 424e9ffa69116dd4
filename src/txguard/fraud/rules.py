"""Fraud rules: each one looks at one transaction's features and may fire with a score in 0..1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from txguard.config import Settings
from txguard.fraud.feature_batch import FeatureBatch

# Bumped whenever a rule, its parameters' meaning or its scoring changes: stamped on every decision.
RULES_VERSION = "rules-1"

# A rule that just fires scores its base; the score rises linearly to its maximum as the
# transaction goes further past the limit (see each rule for where the maximum is reached).
RULE_BASE_SCORE = 0.6
RULE_MAX_SCORE = 0.9


@dataclass(frozen=True, slots=True)
class RuleHit:
    """A rule that fired: its stable code, a human-readable why, and its score in 0..1."""

    code: str
    description: str
    score: float


class Rule(Protocol):
    @property
    def code(self) -> str:
        """Stable machine-readable code of the rule, e.g. "rule.amount_threshold"."""
        ...

    def hits(self, batch: FeatureBatch) -> list[tuple[int, RuleHit]]:
        """(row, hit) for each row of the batch the rule fires for, in row order."""
        ...


def _graded_score(excess: float) -> float:
    """Base score at the limit, rising linearly to the maximum when `excess` reaches 1."""
    return RULE_BASE_SCORE + (RULE_MAX_SCORE - RULE_BASE_SCORE) * min(1.0, max(0.0, excess))


@dataclass(frozen=True, slots=True)
class AmountThresholdRule:
    """Fires when the amount reaches the threshold; maximum score at four times the threshold.

    The threshold is compared in the transaction's own currency, as is (no conversion yet).
    """

    threshold_minor: int
    code: str = "rule.amount_threshold"

    def hits(self, batch: FeatureBatch) -> list[tuple[int, RuleHit]]:
        fired = np.flatnonzero(batch.amount_minor >= self.threshold_minor).tolist()
        return [
            (row, self.hit(int(batch.amount_minor[row]), batch.currencies[row])) for row in fired
        ]

    def hit(self, amount: int, currency: str) -> RuleHit:
        excess = (amount / self.threshold_minor - 1.0) / 3.0
        return RuleHit(
            self.code,
            f"amount {amount} {currency} (minor units) is at or above the "
            f"threshold {self.threshold_minor}",
            _graded_score(excess),
        )


@dataclass(frozen=True, slots=True)
class VelocityRule:
    """Fires when an account has more than `max_transactions` in the window, the current included.

    The window is event time: (t - window, t] for a transaction that happened at t. Maximum score
    at twice the allowed count.
    """

    max_transactions: int
    window_seconds: int
    code: str = "rule.velocity"

    def hits(self, batch: FeatureBatch) -> list[tuple[int, RuleHit]]:
        counts = batch.in_velocity_window
        fired = np.flatnonzero(counts > self.max_transactions).tolist()
        return [(row, self.hit(int(counts[row]))) for row in fired]

    def hit(self, count: int) -> RuleHit:
        excess = (count - self.max_transactions) / self.max_transactions
        return RuleHit(
            self.code,
            f"{count} transactions of the account within {self.window_seconds} s "
            f"(limit {self.max_transactions})",
            _graded_score(excess),
        )


def default_rules(settings: Settings) -> Sequence[Rule]:
    return (
        AmountThresholdRule(settings.amount_threshold_minor),
        VelocityRule(settings.velocity_max_transactions, settings.velocity_window_seconds),
    )
