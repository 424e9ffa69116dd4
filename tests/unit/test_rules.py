"""Rules and the rule scorer: amount threshold, event-time velocity window boundaries."""

from __future__ import annotations

import pytest

from txguard.fraud.feature_batch import FeatureBatch
from txguard.fraud.features import ALL_FEATURES, ScoringInput, TransactionFeatures
from txguard.fraud.rules import (
    RULE_BASE_SCORE,
    RULE_MAX_SCORE,
    AmountThresholdRule,
    Rule,
    RuleHit,
    VelocityRule,
)
from txguard.fraud.scoring import RuleScorer, combine_scores
from txguard.fraud.state import AccountHistory, StateLimits, event_id_hash
from txguard.schema.v1.events_pb2 import TransactionCreated

WINDOW_MS = 60_000


def scoring_input(amount_minor: int = 1_000, in_window: int = 1) -> ScoringInput:
    event = TransactionCreated(event_id="e-1")
    event.transaction.account_id = "acct-1"
    event.transaction.amount_minor = amount_minor
    event.transaction.currency = "EUR"
    return ScoringInput(
        event,
        0,
        TransactionFeatures(
            amount_minor=amount_minor,
            currency="EUR",
            transactions_in_velocity_window=in_window,
            values=(0.0,) * len(ALL_FEATURES),
        ),
    )


def evaluate(rule: Rule, item: ScoringInput) -> RuleHit | None:
    """The rule's hit for one transaction, through the batch interface the detector uses."""
    return dict(rule.hits(FeatureBatch.of([item]))).get(0)


def test_amount_rule_fires_at_threshold_and_not_below() -> None:
    rule = AmountThresholdRule(threshold_minor=10_000)
    assert evaluate(rule, scoring_input(amount_minor=9_999)) is None
    hit = evaluate(rule, scoring_input(amount_minor=10_000))
    assert hit is not None
    assert hit.code == "rule.amount_threshold"
    assert hit.score == pytest.approx(RULE_BASE_SCORE)


def test_amount_rule_score_grows_to_maximum_at_four_times_threshold() -> None:
    rule = AmountThresholdRule(threshold_minor=10_000)
    scores = [evaluate(rule, scoring_input(amount_minor=a)) for a in (20_000, 40_000, 400_000)]
    assert [hit.score if hit else None for hit in scores] == pytest.approx(
        [RULE_BASE_SCORE + (RULE_MAX_SCORE - RULE_BASE_SCORE) / 3, RULE_MAX_SCORE, RULE_MAX_SCORE]
    )


def test_velocity_rule_fires_only_above_the_limit() -> None:
    rule = VelocityRule(max_transactions=3, window_seconds=60)
    assert evaluate(rule, scoring_input(in_window=3)) is None
    hit = evaluate(rule, scoring_input(in_window=4))
    assert hit is not None
    assert hit.code == "rule.velocity"
    assert RULE_BASE_SCORE < hit.score < RULE_MAX_SCORE


def window_counts(times_ms: list[int]) -> list[int]:
    """Per event, in arrival order: how many account events fall in its window, itself included."""
    history = AccountHistory("acct-1")
    limits = StateLimits()
    counts = []
    for index, time_ms in enumerate(times_ms):
        history.record(event_id_hash(f"e-{index}"), time_ms, 100, limits)
        counts.append(history.count_in_window(time_ms, WINDOW_MS))
    return counts


def test_velocity_window_is_half_open_in_event_time() -> None:
    # (t - window, t]: an event exactly one window earlier is outside, one ms later is inside.
    assert window_counts([0, WINDOW_MS]) == [1, 1]
    assert window_counts([0, WINDOW_MS - 1]) == [1, 2]
    assert window_counts([1_000, 1_000, 1_000]) == [1, 2, 3]


def test_velocity_window_uses_event_time_not_arrival_order() -> None:
    # A late event counts only the events at or before its own time.
    assert window_counts([10_000, 20_000, 5_000]) == [1, 2, 1]


def test_velocity_rule_fires_on_the_transaction_that_exceeds_the_limit() -> None:
    rule = VelocityRule(max_transactions=3, window_seconds=WINDOW_MS // 1000)
    counts = window_counts([0, 10_000, 20_000, 30_000, 30_000 + WINDOW_MS])
    fired = [evaluate(rule, scoring_input(in_window=c)) is not None for c in counts]
    assert fired == [False, False, False, True, False]


def test_combined_score_is_noisy_or() -> None:
    assert combine_scores([]) == 0.0
    assert combine_scores([0.6]) == pytest.approx(0.6)
    assert combine_scores([0.6, 0.6]) == pytest.approx(0.84)


def test_rule_scorer_reasons_share_the_score() -> None:
    scorer = RuleScorer(
        [AmountThresholdRule(threshold_minor=10_000), VelocityRule(3, window_seconds=60)]
    )
    quiet, both = scorer.score_batch(
        FeatureBatch.of(
            [scoring_input(amount_minor=100, in_window=1), scoring_input(40_000, in_window=4)]
        )
    )
    assert quiet.score == 0.0 and quiet.reasons == ()
    assert both.score == pytest.approx(1 - (1 - RULE_MAX_SCORE) * (1 - 0.7))
    assert [r.code for r in both.reasons] == ["rule.amount_threshold", "rule.velocity"]
    assert sum(r.contribution for r in both.reasons) == pytest.approx(1.0)
    assert scorer.model_version == "rules-only"
    assert scorer.rules_version
