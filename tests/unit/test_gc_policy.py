"""Services raise the collector's young threshold and keep the older generations' settings."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from txguard.gc_policy import YOUNG_THRESHOLD, set_service_collector


@pytest.fixture
def restored_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_thresholds")
def test_service_collector_raises_only_the_young_threshold() -> None:
    gc.set_threshold(700, 13, 17)
    set_service_collector()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 13, 17)
    assert gc.isenabled()
