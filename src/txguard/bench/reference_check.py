"""The detector's published scores against the reference implementation, on a sample.

Speed must not come from skipped work. After the detector scenario, a random sample of the
pre-filled transactions is scored from the reference features (`fraud/reference_features.py`:
pandas, over the whole dataset at once) with the same model artifact and the same rules; each
score must equal the one the detector published for that transaction. The features come from
two independent implementations, so equal scores mean the detector computed the features (and
the model and rules ran) for those transactions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from txguard.config import Settings
from txguard.fraud.feature_batch import FeatureBatch
from txguard.fraud.features import ALL_FEATURES, ScoringInput, TransactionFeatures
from txguard.fraud.models.artifact import load_model
from txguard.fraud.reference_features import compute_reference_features
from txguard.fraud.rules import default_rules
from txguard.fraud.scoring import ModelScorer
from txguard.replay.events import account_id as replay_account_id
from txguard.schema.v1.events_pb2 import TransactionCreated
from txguard.simulate.handbook import SimulationConfig, simulate

SAMPLE_SIZE = 2_000
# The reference and the detector agree on every feature within 1e-6 (tests/e2e/test_replay.py);
# a score computed from them agrees at least as closely.
SCORE_TOLERANCE = 1e-6
# The velocity rule counts the window the reference's 1-hour feature counts only at this length.
REFERENCE_VELOCITY_SECONDS = 3600
CURRENCY = "EUR"


def check_against_reference(
    config: SimulationConfig,
    settings: Settings,
    model_dir: Path,
    published: dict[str, float],
    *,
    sample_size: int = SAMPLE_SIZE,
    seed: int = 0,
) -> dict[str, Any]:
    """Score `sample_size` random transactions of the simulation from the reference features
    and compare with `published` (the detector's score per transaction id)."""
    if settings.velocity_window_seconds != REFERENCE_VELOCITY_SECONDS:
        return {
            "error": f"the reference has no {settings.velocity_window_seconds} s velocity count "
            f"(only {REFERENCE_VELOCITY_SECONDS} s)"
        }
    dataset = simulate(config)
    reference = compute_reference_features(dataset)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(dataset), size=min(sample_size, len(dataset)), replace=False))
    ids = dataset["TRANSACTION_ID"].astype(str).to_numpy()[rows]
    customers = dataset["CUSTOMER_ID"].to_numpy()[rows]
    amounts = np.rint(dataset["TX_AMOUNT"].to_numpy(dtype=np.float64)[rows] * 100).astype(np.int64)
    values = reference[list(ALL_FEATURES)].to_numpy(dtype=np.float64)[rows]
    in_hour = values[:, ALL_FEATURES.index("CUSTOMER_ID_NB_TX_1HOUR_WINDOW")].astype(np.int64)
    inputs = []
    for transaction_id, customer, amount, row, count in zip(
        ids, customers, amounts.tolist(), values, in_hour.tolist(), strict=True
    ):
        event = TransactionCreated(event_id=f"reference-{transaction_id}")
        event.transaction.transaction_id = transaction_id
        event.transaction.account_id = replay_account_id(customer)
        event.transaction.currency = CURRENCY
        features = TransactionFeatures(amount, CURRENCY, count, tuple(row.tolist()))
        inputs.append(ScoringInput(event, 0, features))
    scorer = ModelScorer(load_model(model_dir), default_rules(settings))
    expected = [result.score for result in scorer.score_batch(FeatureBatch.of(inputs))]
    missing = [tid for tid in ids if tid not in published]
    differences = [
        abs(published[tid] - score)
        for tid, score in zip(ids, expected, strict=True)
        if tid in published
    ]
    different = sum(1 for difference in differences if difference > SCORE_TOLERANCE)
    return {
        "sampled": len(ids),
        "compared": len(differences),
        "missing": len(missing),
        "different": different,
        "tolerance": SCORE_TOLERANCE,
        "max_difference": max(differences, default=0.0),
        "equal": not missing and different == 0,
    }
