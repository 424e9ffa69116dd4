"""The detector refuses an assignment its state changelog cannot follow (no broker needed: the
check comes before any state is read)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from confluent_kafka import Consumer, TopicPartition

from txguard.config import Settings
from txguard.fraud.changelog import ChangelogNotCopartitioned
from txguard.fraud.detector import FraudDetector


def test_a_partition_beyond_the_changelog_s_stops_the_detector(tmp_path: Path) -> None:
    # librdkafka's metadata refresh can give the detector partitions added to the transactions
    # topic before its own topic check sees the new count.
    settings = Settings.from_env({"TXGUARD_HOME": str(tmp_path)})
    detector = FraudDetector(settings)
    detector._partition_count = 6
    topic = settings.topics.transactions
    with pytest.raises(ChangelogNotCopartitioned) as stopped:
        detector._on_assign(
            cast(Consumer, None), [TopicPartition(topic, 5), TopicPartition(topic, 7)]
        )
    assert str(stopped.value).startswith(
        f"{topic} has partition 7, but {settings.detector_state_topic} has 6: partitions were "
        "added to it (or it was created again)"
    )
    assert detector.state.partitions == []
