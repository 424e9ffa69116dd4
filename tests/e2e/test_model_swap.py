"""A new model version published while the detector is under load takes over between batches:
no transaction lost, none decided twice, and each partition switches version at one offset."""

from __future__ import annotations

import itertools
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from tests.e2e.harness import produce_slices, read_topic
from tests.support import wait_until
from txguard.config import TopicNames
from txguard.demo.processes import start_service
from txguard.fraud.features import HANDBOOK_FEATURES
from txguard.fraud.models.artifact import ArtifactInfo, save_model
from txguard.kafka.serde import decode_decision
from txguard.replay.events import ReplayTopics, replay_records
from txguard.simulate.handbook import SimulationConfig, simulate

pytestmark = pytest.mark.integration


def logistic_regression_artifact(directory: Path, seed: int) -> str:
    """A small model of the handbook features; different seeds give different versions."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(400, len(HANDBOOK_FEATURES)))
    labels = (features[:, 0] + rng.normal(size=400) > 1.0).astype(int)
    scaler = StandardScaler().fit(features)
    model = LogisticRegression(random_state=seed).fit(scaler.transform(features), labels)
    return save_model(
        directory,
        model,
        kind="logistic_regression",
        scaler=scaler,
        feature_names=HANDBOOK_FEATURES,
        info=ArtifactInfo(),
    )


def test_hot_swap_under_load_loses_nothing_and_switches_once_per_partition(
    tmp_path: Path, txguard_env: dict[str, str]
) -> None:
    first = logistic_regression_artifact(tmp_path / "models" / "a", seed=1)
    second = logistic_regression_artifact(tmp_path / "models" / "b", seed=2)
    assert first != second
    live = tmp_path / "models" / "live"
    live.symlink_to(tmp_path / "models" / "a")
    topics = TopicNames(f"swap-{uuid.uuid4().hex[:10]}")
    env = {
        **txguard_env,
        "TXGUARD_TOPIC_NAMESPACE": topics.namespace,
        "TXGUARD_MODEL_DIR": str(live),
        "TXGUARD_MODEL_POLL_SECONDS": "1",
    }
    bootstrap = env["TXGUARD_KAFKA_BOOTSTRAP"]
    dataset = simulate(SimulationConfig(customers=300, terminals=600, days=20, seed=11))
    slices = list(
        replay_records(
            dataset,
            ReplayTopics(topics.transactions, topics.labels, 6, 6),
            label_delay_us=7 * 86_400_000_000,
        )
    )
    detector = start_service("detector", env=env, log_dir=tmp_path / "logs")
    try:
        # The detector creates the namespace's topics and joins its group.
        wait_until(
            lambda: "assigned partitions" in (tmp_path / "logs" / "detector.log").read_text(),
            timeout=90,
        )

        def swap_halfway(index: int) -> None:
            if index == len(slices) // 2:
                live.unlink()
                live.symlink_to(tmp_path / "models" / "b")

        # A steady load of about 10 seconds across the swap.
        produce_slices(bootstrap, slices, pause_seconds=0.02, before_slice=swap_halfway)

        def decided() -> int:
            return len(read_topic(bootstrap, topics.decisions))

        wait_until(lambda: decided() >= len(dataset), timeout=180)
        assert detector.alive(), detector.log_tail()
    finally:
        detector.terminate()

    decisions = [
        decode_decision(r.value, r.headers) for r in read_topic(bootstrap, topics.decisions)
    ]
    source = {
        r.event_id: (r.partition, r.offset)
        for r in read_topic(bootstrap, topics.transactions)
        if r.event_id
    }
    by_transaction = defaultdict(list)
    for decision in decisions:
        by_transaction[decision.transaction_id].append(decision)
    assert len(by_transaction) == len(dataset)  # none lost
    assert all(len(found) == 1 for found in by_transaction.values())  # none decided twice
    versions = {d.model_version for d in decisions}
    assert versions == {f"logistic_regression-{first}", f"logistic_regression-{second}"}
    per_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for decision in decisions:
        partition, offset = source[f"replay-{decision.transaction_id}"]
        per_partition[partition].append((offset, decision.model_version))
    for partition, decided_in_order in per_partition.items():
        sequence = [version for _, version in sorted(decided_in_order)]
        switches = sum(1 for a, b in itertools.pairwise(sequence) if a != b)
        assert switches <= 1, f"partition {partition} switched model {switches} times"
        assert sequence[0] == f"logistic_regression-{first}"
    assert sum(
        1 for found in per_partition.values() if found and sorted(found)[-1][1].endswith(second)
    ) == len(per_partition)
