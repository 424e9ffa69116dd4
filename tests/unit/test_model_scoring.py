"""Model scoring in the detector: one call per batch, feature reasons, rules, shadow scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from txguard.fraud.decisions import DecisionThresholds, build_decision
from txguard.fraud.feature_batch import FeatureBatch
from txguard.fraud.features import (
    ALL_FEATURES,
    HANDBOOK_FEATURES,
    ScoringInput,
    TransactionFeatures,
)
from txguard.fraud.models.artifact import ArtifactInfo, load_model, save_model
from txguard.fraud.rules import AmountThresholdRule
from txguard.fraud.scoring import TOP_FEATURE_REASONS, ModelScorer
from txguard.schema.v1.events_pb2 import TransactionCreated


def artifact(directory: Path, seed: int, names: tuple[str, ...] = HANDBOOK_FEATURES) -> Path:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(300, len(names)))
    labels = (features[:, 0] - features[:, 1] + rng.normal(size=300) > 0.5).astype(int)
    scaler = StandardScaler().fit(features)
    model = LogisticRegression(random_state=0).fit(scaler.transform(features), labels)
    save_model(
        directory,
        model,
        kind="logistic_regression",
        scaler=scaler,
        feature_names=names,
        info=ArtifactInfo(),
    )
    return directory


def scoring_input(values: list[float], amount_minor: int = 1_000) -> ScoringInput:
    event = TransactionCreated(event_id="e")
    event.transaction.transaction_id = "t"
    event.transaction.account_id = "a"
    return ScoringInput(
        event,
        0,
        TransactionFeatures(
            amount_minor=amount_minor,
            currency="EUR",
            transactions_in_velocity_window=1,
            values=tuple(values),
        ),
    )


def test_scores_equal_the_model_on_the_columns_it_was_trained_on(tmp_path: Path) -> None:
    model = load_model(artifact(tmp_path / "m", seed=1))
    rows = np.random.default_rng(5).normal(size=(20, len(ALL_FEATURES)))
    results = ModelScorer(model, []).score_batch(
        FeatureBatch.of([scoring_input(list(r)) for r in rows])
    )
    columns = [ALL_FEATURES.index(name) for name in HANDBOOK_FEATURES]
    expected = model.predict(rows[:, columns])
    assert [r.score for r in results] == pytest.approx(list(expected), abs=1e-12)
    for result, row in zip(results, rows, strict=True):
        features = [r for r in result.reasons if r.code.startswith("feature.")]
        assert len(features) <= TOP_FEATURE_REASONS
        contributions = model.contributions(row[columns][None, :])[0]
        top = {
            f"feature.{HANDBOOK_FEATURES[i]}"
            for i in np.argsort(-contributions)[:3]
            if contributions[i] > 0
        }
        assert {r.code for r in features} == top
        assert sum(r.contribution for r in result.reasons) == pytest.approx(1.0 if top else 0.0)
        assert result.shadow_score is None


def test_a_rule_that_fires_raises_the_score_and_is_a_reason(tmp_path: Path) -> None:
    model = load_model(artifact(tmp_path / "m", seed=1))
    values = [0.0] * len(ALL_FEATURES)
    plain, big = ModelScorer(model, [AmountThresholdRule(5_000)]).score_batch(
        FeatureBatch.of(
            [scoring_input(values, amount_minor=100), scoring_input(values, amount_minor=50_000)]
        )
    )
    assert "rule.amount_threshold" not in {r.code for r in plain.reasons}
    assert big.reasons[0].code == "rule.amount_threshold"
    assert big.score == pytest.approx(1 - (1 - plain.score) * (1 - 0.9))
    # The shares are of one total: the rule's score and the features' positive contributions.
    features = [r for r in big.reasons if r.code.startswith("feature.")]
    assert [r.code for r in features] == [r.code for r in plain.reasons]
    assert [r.description for r in features] == [r.description for r in plain.reasons]
    assert sum(r.contribution for r in plain.reasons) == pytest.approx(1.0)
    assert sum(r.contribution for r in big.reasons) == pytest.approx(1.0)
    rule_share = big.reasons[0].contribution
    for mine, alone in zip(features, plain.reasons, strict=True):
        assert mine.contribution == pytest.approx(alone.contribution * (1 - rule_share))


def test_shadow_scores_are_recorded_and_do_not_change_the_outcome(tmp_path: Path) -> None:
    live = load_model(artifact(tmp_path / "live", seed=1))
    shadow = load_model(artifact(tmp_path / "shadow", seed=2, names=ALL_FEATURES))
    rows = np.random.default_rng(9).normal(size=(10, len(ALL_FEATURES)))
    inputs = [scoring_input(list(r)) for r in rows]
    alone = ModelScorer(live, []).score_batch(FeatureBatch.of(inputs))
    scorer = ModelScorer(live, [], shadow=shadow)
    beside = scorer.score_batch(FeatureBatch.of(inputs))
    assert [r.score for r in beside] == [r.score for r in alone]
    assert [r.shadow_score for r in beside] == pytest.approx(list(shadow.predict(rows)))
    decision = build_decision(
        inputs[0].event,
        beside[0],
        thresholds=DecisionThresholds(review=0.5, decline=0.8),
        model_version=scorer.model_version,
        rules_version=scorer.rules_version,
        decided_at_us=1,
        shadow_model_version=scorer.shadow_model_version,
    )
    assert decision.shadow_score == pytest.approx(beside[0].shadow_score)
    assert decision.shadow_model_version == f"logistic_regression-{shadow.version}"
    assert decision.model_version == f"logistic_regression-{live.version}"


def test_a_model_needing_an_unknown_feature_is_refused(tmp_path: Path) -> None:
    model = load_model(artifact(tmp_path / "m", seed=1, names=("TX_AMOUNT", "NOT_A_FEATURE")))
    with pytest.raises(ValueError, match="NOT_A_FEATURE"):
        ModelScorer(model, [])
