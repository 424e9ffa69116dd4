"""What a loop commits and counts of a consumed batch: each partition's last offset + 1, and its
first and last record, however the batch's records of several partitions interleave."""

from __future__ import annotations

from confluent_kafka import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from txguard.kafka.consumer_loop import next_offsets, partition_spans

# (topic, partition) of each record in batch order; offsets grow within each partition.
batches = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 2)), max_size=60)


def with_offsets(layout: list[tuple[str, int]]) -> list[tuple[str, int, int]]:
    following: dict[tuple[str, int], int] = {}
    placed = []
    for topic, partition in layout:
        offset = following.get((topic, partition), 100 * partition)
        following[(topic, partition)] = offset + 1 + offset % 2  # gaps, as compaction leaves
        placed.append((topic, partition, offset))
    return placed


@settings(max_examples=300, deadline=None)
@given(layout=batches)
def test_next_offsets_and_spans_of_interleaved_partitions(layout: list[tuple[str, int]]) -> None:
    placed = with_offsets(layout)
    batch = [
        Message(topic=topic, partition=partition, offset=offset, timestamp=(1, offset * 10))
        for topic, partition, offset in placed
    ]
    offsets: dict[tuple[str, int], list[int]] = {}
    for topic, partition, offset in placed:
        offsets.setdefault((topic, partition), []).append(offset)
    expected = {key: held[-1] + 1 for key, held in offsets.items()}
    assert {(t.topic, t.partition): t.offset for t in next_offsets(batch)} == expected
    spans = {(s.topic, s.partition): s for s in partition_spans(batch)}
    assert spans.keys() == offsets.keys()
    for key, held in offsets.items():
        span = spans[key]
        assert (span.first_offset, span.last_offset, span.records) == (held[0], held[-1], len(held))
        assert (span.first_timestamp, span.last_timestamp) == (held[0] / 100, held[-1] / 100)
