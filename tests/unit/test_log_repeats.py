"""RepeatedLines: one librdkafka line of a kind per window, and the count of the dropped ones."""

from __future__ import annotations

import logging

import pytest

from txguard.observability.log_repeats import RepeatedLines


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def logger(clock: Clock) -> logging.Logger:
    logger = logging.getLogger("test.log_repeats")
    logger.filters.clear()
    logger.addFilter(RepeatedLines(window_seconds=30, clock=clock))
    return logger


def refused(after_ms: int) -> tuple[str, str, str, str]:
    """A line as confluent-kafka logs it: facility, client name, librdkafka's text."""
    return (
        "%s [%s] %s",
        "FAIL",
        "txguard-detector#consumer-2",
        "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused "
        f"(after {after_ms}ms in state CONNECT)",
    )


def test_repeats_within_the_window_are_dropped_and_counted_on_the_next_line_passed(
    logger: logging.Logger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="test.log_repeats"):
        for tick in range(600):  # 20 a second for 30 s
            clock.now = tick * 0.05
            logger.error(*refused(tick % 3))
        clock.now = 30.0
        logger.error(*refused(1))
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].endswith("(after 0ms in state CONNECT)")
    assert messages[1].endswith(
        "(after 1ms in state CONNECT) (and 599 more like it in the last 30 s)"
    )


def test_lines_of_other_kinds_or_levels_pass(
    logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="test.log_repeats"):
        logger.error(*refused(0))
        logger.warning(*refused(0))
        logger.error("%s [%s] %s", "SESSTMOUT", "txguard-applier#consumer-2", "session timed out")
        logger.error(*refused(0))
    assert [record.levelname for record in caplog.records] == ["ERROR", "WARNING", "ERROR"]


def test_a_line_without_repeats_is_passed_unchanged_after_its_window(
    logger: logging.Logger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="test.log_repeats"):
        logger.error(*refused(0))
        clock.now = 31.0
        logger.error(*refused(0))
    expected = "FAIL [txguard-detector#consumer-2] " + refused(0)[3]
    assert [record.getMessage() for record in caplog.records] == [expected, expected]
