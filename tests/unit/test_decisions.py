"""Decision thresholds and the FraudDecision event built from a score."""

from __future__ import annotations

import pytest

from txguard.fraud.decisions import DecisionThresholds, build_decision
from txguard.fraud.scoring import ReasonScore, ScoreResult
from txguard.schema.v1.decision_pb2 import Outcome
from txguard.schema.v1.events_pb2 import TransactionCreated


@pytest.mark.parametrize(
    ("score", "outcome"),
    [
        (0.0, Outcome.OUTCOME_APPROVE),
        (0.4999, Outcome.OUTCOME_APPROVE),
        (0.5, Outcome.OUTCOME_REVIEW),
        (0.7999, Outcome.OUTCOME_REVIEW),
        (0.8, Outcome.OUTCOME_DECLINE),
        (1.0, Outcome.OUTCOME_DECLINE),
    ],
)
def test_outcome_thresholds_are_inclusive(score: float, outcome: int) -> None:
    assert DecisionThresholds(review=0.5, decline=0.8).outcome(score) == outcome


def test_equal_thresholds_never_review() -> None:
    thresholds = DecisionThresholds(review=0.6, decline=0.6)
    assert thresholds.outcome(0.59) == Outcome.OUTCOME_APPROVE
    assert thresholds.outcome(0.6) == Outcome.OUTCOME_DECLINE


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="review <= decline"):
        DecisionThresholds(review=0.9, decline=0.5)


def test_decision_copies_the_transaction_and_carries_reasons() -> None:
    event = TransactionCreated(event_id="ev-1")
    tx = event.transaction
    tx.transaction_id, tx.account_id = "tx-1", "acct-1"
    tx.occurred_at.FromMicroseconds(1_000_000)
    tx.accepted_at.FromMicroseconds(2_000_000)
    result = ScoreResult(0.84, (ReasonScore("rule.velocity", "too many", 1.0),))
    decision = build_decision(
        event,
        result,
        thresholds=DecisionThresholds(review=0.5, decline=0.8),
        model_version="rules-only",
        rules_version="rules-1",
        decided_at_us=3_000_000,
    )
    assert decision.decision_id
    assert (decision.event_id, decision.transaction_id, decision.account_id) == (
        "ev-1",
        "tx-1",
        "acct-1",
    )
    assert decision.outcome == Outcome.OUTCOME_DECLINE
    assert decision.score == pytest.approx(0.84)
    assert [(r.code, r.contribution) for r in decision.reasons] == [("rule.velocity", 1.0)]
    assert (decision.model_version, decision.rules_version) == ("rules-only", "rules-1")
    assert decision.occurred_at.ToMicroseconds() == 1_000_000
    assert decision.accepted_at.ToMicroseconds() == 2_000_000
    assert decision.decided_at.ToMicroseconds() == 3_000_000
    other = build_decision(
        event,
        result,
        thresholds=DecisionThresholds(review=0.5, decline=0.8),
        model_version="rules-only",
        rules_version="rules-1",
        decided_at_us=3_000_000,
    )
    assert other.decision_id != decision.decision_id
