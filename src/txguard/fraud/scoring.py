"""Scorers turn a batch of transactions into fraud scores with reasons.

`Scorer` is the seam where machine-learning models plug in: it scores a whole batch at once so a
model can vectorise. `RuleScorer` is the rules-only scorer built from `rules.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from txguard.config import Settings
from txguard.fraud.features import ScoringInput
from txguard.fraud.rules import RULES_VERSION, Rule, RuleHit, default_rules

RULES_ONLY_MODEL_VERSION = "rules-only"


@dataclass(frozen=True, slots=True)
class ReasonScore:
    """Why a score is what it is; `contribution` is this reason's share of the score, 0..1."""

    code: str
    description: str
    contribution: float


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """Fraud probability in 0..1 and the reasons behind it, largest contribution first."""

    score: float
    reasons: tuple[ReasonScore, ...] = ()


class Scorer(Protocol):
    model_version: str
    rules_version: str

    def score_batch(self, inputs: Sequence[ScoringInput]) -> list[ScoreResult]:
        """One result per input, in the same order."""
        ...


def combine_scores(scores: Sequence[float]) -> float:
    """Noisy-OR: the chance that at least one independent signal is right, 1 - prod(1 - s)."""
    return 1.0 - math.prod(1.0 - s for s in scores)


def result_from_hits(hits: Sequence[RuleHit]) -> ScoreResult:
    """Combined score of the rules that fired; each reason's share is proportional to its score."""
    if not hits:
        return ScoreResult(0.0)
    total = sum(hit.score for hit in hits)
    reasons = tuple(
        ReasonScore(hit.code, hit.description, hit.score / total if total else 0.0)
        for hit in sorted(hits, key=lambda hit: hit.score, reverse=True)
    )
    return ScoreResult(combine_scores([hit.score for hit in hits]), reasons)


class RuleScorer:
    """Scores with the rules alone."""

    model_version = RULES_ONLY_MODEL_VERSION
    rules_version = RULES_VERSION

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def from_settings(cls, settings: Settings) -> RuleScorer:
        return cls(default_rules(settings))

    def score_batch(self, inputs: Sequence[ScoringInput]) -> list[ScoreResult]:
        results: list[ScoreResult] = []
        for item in inputs:
            hits = [hit for rule in self.rules if (hit := rule.evaluate(item)) is not None]
            results.append(result_from_hits(hits))
        return results
