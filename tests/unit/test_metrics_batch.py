"""Observing a batch of values at once exposes exactly what observing them one by one does."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from txguard.observability.metrics import END_TO_END_BUCKETS, observe_many


def exposition(values: list[float], *, batch: bool) -> bytes:
    registry = CollectorRegistry()
    histogram = Histogram(
        "latency_seconds", "test", ["stage"], buckets=END_TO_END_BUCKETS, registry=registry
    )
    child = histogram.labels("decided")
    if batch:
        observe_many(child, values)
    else:
        for value in values:
            child.observe(value)
    return generate_latest(registry)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(0, 60, allow_nan=False),
            st.sampled_from(END_TO_END_BUCKETS),  # exactly on a bound: counted in that bucket
            st.just(math.inf),
        ),
        max_size=50,
    )
)
def test_a_batch_observes_like_one_by_one(values: list[float]) -> None:
    assert exposition(values, batch=True) == exposition(values, batch=False)
