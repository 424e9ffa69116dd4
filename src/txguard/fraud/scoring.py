"""Scorers turn a batch of transactions into fraud scores with reasons.

`Scorer` is the seam where machine-learning models plug in: it scores a whole batch at once so a
model can vectorise. `RuleScorer` is the rules-only scorer built from `rules.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, Protocol, cast

import numpy as np

from txguard.config import Settings
from txguard.fraud import _per_record
from txguard.fraud.feature_batch import FeatureBatch
from txguard.fraud.features import ALL_FEATURES
from txguard.fraud.models.artifact import LoadedModel
from txguard.fraud.rules import RULES_VERSION, Rule, RuleHit, default_rules

RULES_ONLY_MODEL_VERSION = "rules-only"


class ReasonScore(NamedTuple):
    """Why a score is what it is; `contribution` is this reason's share of the score, 0..1."""

    code: str
    description: str
    contribution: float


class ScoreResult(NamedTuple):
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

    def score_batch(self, batch: FeatureBatch) -> list[ScoreResult]:
        """One result per row of the batch, in the same order."""
        ...


def combine_scores(scores: Sequence[float]) -> float:
    """Noisy-OR: the chance that at least one independent signal is right, 1 - prod(1 - s)."""
    return 1.0 - math.prod(1.0 - s for s in scores)


_NOTHING_FIRED = ScoreResult(0.0)


def rule_hits_by_row(rules: Sequence[Rule], batch: FeatureBatch) -> dict[int, list[RuleHit]]:
    """The rules that fired, per row of the batch (rows where none fired are absent)."""
    fired: dict[int, list[RuleHit]] = {}
    for rule in rules:
        for row, hit in rule.hits(batch):
            fired.setdefault(row, []).append(hit)
    return fired


def result_from_hits(hits: Sequence[RuleHit]) -> ScoreResult:
    """Combined score of the rules that fired; each reason's share is proportional to its score."""
    if not hits:
        return _NOTHING_FIRED
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

    def score_batch(self, batch: FeatureBatch) -> list[ScoreResult]:
        fired = rule_hits_by_row(self.rules, batch)
        return [result_from_hits(fired.get(row, ())) for row in range(len(batch))]


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
        self._reason_codes = [f"feature.{name}" for name in model.feature_names]
        self._reason_labels = [f"{name} = " for name in model.feature_names]
        self._shadow_columns = _columns_for(shadow) if shadow else None

    def score_batch(self, batch: FeatureBatch) -> list[ScoreResult]:
        if not len(batch):
            return []
        features = batch.values[:, self._columns]
        model_scores = self.model.predict(features)
        # The noisy-OR of the model's score alone, as `combine_scores` computes it.
        scores = (1.0 - (1.0 - model_scores)).tolist()
        contributions = self.model.contributions(features)
        shadow_scores = (
            self.shadow.predict(batch.values[:, self._shadow_columns]).tolist()
            if self.shadow is not None and self._shadow_columns is not None
            else None
        )
        # Per row, the largest contributions, their features' values and their positive total,
        # computed for the whole batch; only the reasons themselves are built row by row.
        top = np.argsort(-contributions, axis=1)[:, :TOP_FEATURE_REASONS]
        # Plain fancy indexing picks the same entries as take_along_axis, without its set-up.
        each_row = np.arange(len(top))[:, None]
        top_shares = contributions[each_row, top]
        positive = top_shares > 0
        feature_totals = np.where(positive, top_shares, 0.0).sum(axis=1)
        top_values = features[each_row, top]
        fired = rule_hits_by_row(self.rules, batch)
        # Each reason's share of its row's positive total (rows where rules fired are redone;
        # a row without a positive total names no feature).
        top_fractions = top_shares / np.where(feature_totals > 0, feature_totals, 1.0)[:, None]
        # The rows where no rule fired, in C (`_per_record.model_results`): a ScoreResult of the
        # model's score and, per kept column, ReasonScore(code, f"{label}{value:g}", fraction).
        # The per-row arrays go flat, row after row: one list each instead of one per row.
        results: list[ScoreResult | None] = _per_record.model_results(
            scores,
            shadow_scores,
            top.shape[1],
            top.ravel().tolist(),
            top_fractions.ravel().tolist(),
            top_values.ravel().tolist(),
            positive.ravel().tolist(),
            self._reason_codes,
            self._reason_labels,
            fired,
            ScoreResult,
            ReasonScore,
        )
        codes, labels = self._reason_codes, self._reason_labels
        for row, hits in fired.items():
            results[row] = self._with_rules(
                float(model_scores[row]),
                hits,
                float(feature_totals[row]),
                [
                    (codes[column], f"{labels[column]}{value:g}", share)
                    for column, share, value, keep in zip(
                        top[row].tolist(),
                        top_shares[row].tolist(),
                        top_values[row].tolist(),
                        positive[row].tolist(),
                        strict=True,
                    )
                    if keep
                ],
                None if shadow_scores is None else shadow_scores[row],
            )
        return cast(list[ScoreResult], results)

    @staticmethod
    def _with_rules(
        model_score: float,
        hits: Sequence[RuleHit],
        feature_total: float,
        feature_reasons: Sequence[tuple[str, str, float]],
        shadow_score: float | None,
    ) -> ScoreResult:
        """A row where rules fired: the rules and the model combine (noisy-OR), and each
        reason's share is of the rules' and the features' total."""
        total = feature_total + sum(hit.score for hit in hits)
        reasons = [
            ReasonScore(hit.code, hit.description, hit.score / total if total else 0.0)
            for hit in sorted(hits, key=lambda hit: hit.score, reverse=True)
        ]
        reasons += [
            ReasonScore(code, description, share / total)
            for code, description, share in feature_reasons
        ]
        score = combine_scores([model_score, *(hit.score for hit in hits)])
        return ScoreResult(score, tuple(reasons), shadow_score)


def _columns_for(model: LoadedModel) -> list[int]:
    """Where each of the model's inputs sits among the detector's features."""
    missing = [name for name in model.feature_names if name not in ALL_FEATURES]
    if missing:
        raise ValueError(
            f"model {model.version} needs features the detector does not compute: {missing}"
        )
    return [ALL_FEATURES.index(name) for name in model.feature_names]
