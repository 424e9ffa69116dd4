"""Scorers turn a batch of transactions into fraud scores with reasons.

`Scorer` is the seam where machine-learning models plug in: it scores a whole batch at once so a
model can vectorise. `RuleScorer` is the rules-only scorer built from `rules.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from txguard.config import Settings
from txguard.fraud.features import ALL_FEATURES, ScoringInput
from txguard.fraud.models.artifact import LoadedModel
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
    # The shadow model's score, recorded beside the live one; None without a shadow model.
    shadow_score: float | None = None


class Scorer(Protocol):
    model_kind: str
    model_version: str
    rules_version: str
    shadow_model_version: str

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

    model_kind = "rules"
    model_version = RULES_ONLY_MODEL_VERSION
    rules_version = RULES_VERSION
    shadow_model_version = ""

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


# How many features a decision names as its reasons, largest contribution first.
TOP_FEATURE_REASONS = 3


class ModelScorer:
    """A model scores the whole batch at once; rules that fire raise the score (noisy-OR).

    A decision's reasons are the rules that fired and the features that pushed the model's score
    up most (the model's own per-feature contributions). A shadow model, when given, scores the
    same rows; its score is recorded and never changes the outcome.
    """

    rules_version = RULES_VERSION

    def __init__(
        self,
        model: LoadedModel,
        rules: Sequence[Rule],
        *,
        shadow: LoadedModel | None = None,
    ) -> None:
        self.model = model
        self.rules = tuple(rules)
        self.shadow = shadow
        self.model_kind = model.kind
        self.model_version = f"{model.kind}-{model.version}"
        self.shadow_model_version = f"{shadow.kind}-{shadow.version}" if shadow else ""
        self._columns = _columns_for(model)
        self._shadow_columns = _columns_for(shadow) if shadow else None

    def score_batch(self, inputs: Sequence[ScoringInput]) -> list[ScoreResult]:
        if not inputs:
            return []
        matrix = np.array([item.features.values for item in inputs], dtype=np.float64)
        features = matrix[:, self._columns]
        scores = self.model.predict(features)
        contributions = self.model.contributions(features)
        shadow_scores = (
            self.shadow.predict(matrix[:, self._shadow_columns])
            if self.shadow is not None and self._shadow_columns is not None
            else None
        )
        names = self.model.feature_names
        # Per row, the indices of the largest contributions, computed for the whole batch.
        top = np.argsort(-contributions, axis=1)[:, :TOP_FEATURE_REASONS]
        results: list[ScoreResult] = []
        for row, item in enumerate(inputs):
            hits = [hit for rule in self.rules if (hit := rule.evaluate(item)) is not None]
            model_score = float(scores[row])
            feature_reasons = [
                (names[i], float(contributions[row, i]), float(features[row, i]))
                for i in top[row]
                if contributions[row, i] > 0
            ]
            total = sum(c for _, c, _ in feature_reasons) + sum(h.score for h in hits)
            reasons = [
                ReasonScore(hit.code, hit.description, hit.score / total if total else 0.0)
                for hit in sorted(hits, key=lambda hit: hit.score, reverse=True)
            ]
            reasons += [
                ReasonScore(f"feature.{name}", f"{name} = {value:g}", share / total)
                for name, share, value in feature_reasons
            ]
            results.append(
                ScoreResult(
                    combine_scores([model_score, *(hit.score for hit in hits)]),
                    tuple(reasons),
                    None if shadow_scores is None else float(shadow_scores[row]),
                )
            )
        return results


def _columns_for(model: LoadedModel) -> list[int]:
    """Where each of the model's inputs sits among the detector's features."""
    missing = [name for name in model.feature_names if name not in ALL_FEATURES]
    if missing:
        raise ValueError(
            f"model {model.version} needs features the detector does not compute: {missing}"
        )
    return [ALL_FEATURES.index(name) for name in model.feature_names]
