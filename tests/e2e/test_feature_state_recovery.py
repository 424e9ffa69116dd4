"""Detector and terminal-risk aggregator killed with SIGKILL mid-stream and restarted: every
decision still carries exactly the features a batch computation gives."""

from __future__ import annotations

import threading
import uuid
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.e2e.harness import Pipeline, produce_slices, read_topic
from tests.support import wait_until
from txguard.config import TopicNames
from txguard.fraud.features import ALL_FEATURES
from txguard.fraud.reference_features import compute_reference_features
from txguard.kafka.serde import decode_decision
from txguard.replay.events import DAY_US, ReplayTopics, replay_records
from txguard.simulate.handbook import SimulationConfig, simulate

pytestmark = pytest.mark.integration


def test_features_survive_kills_of_the_detector_and_the_aggregator(
    tmp_path: Path, txguard_env: dict[str, str]
) -> None:
    dataset = simulate(SimulationConfig(customers=400, terminals=800, days=40, seed=21))
    topics = TopicNames(f"recovery-{uuid.uuid4().hex[:10]}")
    env = {
        **txguard_env,
        "TXGUARD_TOPIC_NAMESPACE": topics.namespace,
        "TXGUARD_TERMINAL_TABLE_MAX_WAIT_MS": "unbounded",
        "TXGUARD_DECISION_FEATURES": "true",
        "TXGUARD_CHECKPOINT_INTERVAL_MS": "300",
    }
    bootstrap = env["TXGUARD_KAFKA_BOOTSTRAP"]
    pipeline = Pipeline(env, tmp_path / "logs")
    pipeline.start("detector", "terminal-risk")
    wait_until(lambda: "assigned partitions" in pipeline.logs(), timeout=90)

    produced = threading.Event()

    def produce() -> None:
        slices = list(
            replay_records(
                dataset,
                ReplayTopics(topics.transactions, topics.labels, 6, 6),
                label_delay_us=7 * DAY_US,
            )
        )
        # About 10 s of load, so the kills land mid-stream.
        produce_slices(bootstrap, slices, pause_seconds=0.01)
        produced.set()

    producer_thread = threading.Thread(target=produce, daemon=True)
    producer_thread.start()

    def decided() -> int:
        return len(
            {
                decode_decision(r.value, r.headers).transaction_id
                for r in read_topic(bootstrap, topics.decisions)
            }
        )

    def reached(count: int) -> bool:
        return decided() >= count

    try:
        for service, after in (("detector", 3_000), ("terminal-risk", 8_000), ("detector", 14_000)):
            wait_until(partial(reached, after), timeout=180)
            pipeline.kill(service)
            pipeline.start(service)
        wait_until(produced.is_set, timeout=180)
        wait_until(lambda: decided() >= len(dataset), timeout=300)
    finally:
        pipeline.stop_all()
    producer_thread.join(timeout=10)

    reference = compute_reference_features(dataset).set_index("TRANSACTION_ID")
    decisions = [
        decode_decision(r.value, r.headers) for r in read_topic(bootstrap, topics.decisions)
    ]
    assert {int(d.transaction_id) for d in decisions} == set(dataset["TRANSACTION_ID"])
    # Every decision, redeliveries included, carries the batch computation's features.
    streamed = pd.DataFrame(
        [[d.features[name] for name in ALL_FEATURES] for d in decisions],
        columns=list(ALL_FEATURES),
        index=[int(d.transaction_id) for d in decisions],
    )
    expected = reference.loc[streamed.index, list(ALL_FEATURES)]
    difference = np.abs(streamed.to_numpy() - expected.to_numpy())
    row, column = (int(i) for i in np.unravel_index(int(np.argmax(difference)), difference.shape))
    assert difference[row, column] <= 1e-6, (
        f"{ALL_FEATURES[column]} of TRANSACTION_ID {streamed.index[row]}: "
        f"{streamed.to_numpy()[row, column]} streamed vs {expected.to_numpy()[row, column]} "
        "expected"
    )
