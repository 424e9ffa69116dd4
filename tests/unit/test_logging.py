"""Log lines in both formats: JSON lines carry the extras, and no card number reaches any line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txguard.observability.logging import (
    CARD_NUMBER_MASK,
    configure_logging,
    make_handler,
    mask_card_numbers,
)
from txguard.schema.luhn import luhn_valid, with_check_digit

ASCII_DIGITS = "0123456789"


@dataclass
class CapturedLogger:
    """A logger writing each record through a text and a JSON handler into two buffers."""

    logger: logging.Logger
    text: io.StringIO
    json: io.StringIO

    def lines(self) -> tuple[list[str], list[str]]:
        text, encoded = self.text.getvalue(), self.json.getvalue()
        self.text.seek(0)
        self.text.truncate()
        self.json.seek(0)
        self.json.truncate()
        return text.splitlines(), encoded.splitlines()


@contextmanager
def captured_logger() -> Iterator[CapturedLogger]:
    logger = logging.getLogger("txguard.tests.logging")
    text, encoded = io.StringIO(), io.StringIO()
    logger.handlers[:] = [
        make_handler("transactions", "text", text),
        make_handler("transactions", "json", encoded),
    ]
    logger.setLevel(logging.DEBUG)
    # Kept away from pytest's own capture on the root logger, which formats records unmasked.
    logger.propagate = False
    try:
        yield CapturedLogger(logger, text, encoded)
    finally:
        logger.handlers.clear()
        logger.propagate = True


@pytest.fixture
def captured() -> Iterator[CapturedLogger]:
    with captured_logger() as logger:
        yield logger


def test_json_lines_carry_the_fixed_fields_and_the_extras(captured: CapturedLogger) -> None:
    captured.logger.info(
        "accepted transaction %s",
        "0193f1c2a7b04c5d8e9f00112233aabb",
        extra={
            "transaction_id": "0193f1c2a7b04c5d8e9f00112233aabb",
            "event_id": "4c5d8e9f00112233aabb0193f1c2a7b0",
            "account_id": "acct-17",
            "topic": "txguard.transactions.v1",
            "partition": 3,
            "offset": 1204,
        },
    )
    text, (line,) = captured.lines()
    entry = json.loads(line)
    assert entry["time"].endswith("Z") and entry["time"][:4].isdigit()
    assert entry["level"] == "INFO"
    assert entry["service"] == "transactions"
    assert entry["logger"] == "txguard.tests.logging"
    assert entry["message"] == "accepted transaction 0193f1c2a7b04c5d8e9f00112233aabb"
    assert entry["transaction_id"] == "0193f1c2a7b04c5d8e9f00112233aabb"
    assert entry["event_id"] == "4c5d8e9f00112233aabb0193f1c2a7b0"
    assert entry["account_id"] == "acct-17"
    assert entry["topic"] == "txguard.transactions.v1"
    assert (entry["partition"], entry["offset"]) == (3, 1204)
    assert "exception" not in entry
    # The text format carries the same extras after the message.
    assert text[0].endswith(
        "accepted transaction 0193f1c2a7b04c5d8e9f00112233aabb"
        " transaction_id=0193f1c2a7b04c5d8e9f00112233aabb"
        " event_id=4c5d8e9f00112233aabb0193f1c2a7b0 account_id=acct-17"
        " topic=txguard.transactions.v1 partition=3 offset=1204"
    )
    assert " INFO transactions txguard.tests.logging: " in text[0]


def test_an_exception_is_one_json_line_with_its_traceback(captured: CapturedLogger) -> None:
    try:
        raise RuntimeError("store\nunavailable")
    except RuntimeError:
        captured.logger.exception("storing failed", extra={"time": "not the timestamp"})
    text, json_lines = captured.lines()
    assert len(json_lines) == 1
    entry = json.loads(json_lines[0])
    assert entry["level"] == "ERROR"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("RuntimeError: store\nunavailable")
    # An extra never replaces a fixed field.
    assert entry["extra_time"] == "not the timestamp" and entry["time"].endswith("Z")
    assert text[1] == "Traceback (most recent call last):"


def test_arguments_that_do_not_fit_still_give_one_line(captured: CapturedLogger) -> None:
    captured.logger.warning("%s and %s", "4111111111111111")
    text, (line,) = captured.lines()
    assert json.loads(line)["message"].startswith("%s and %s (log arguments did not fit")
    assert "4111111111111111" not in text[0] + line


def test_configure_logging_selects_the_format() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("DEBUG", "applier", "json")
        (handler,) = root.handlers
        record = logging.LogRecord(
            "x", logging.INFO, __file__, 1, "pan 4111111111111111", None, None
        )
        assert handler.filter(record)
        assert json.loads(handler.format(record))["message"] == f"pan {CARD_NUMBER_MASK}"
        assert root.level == logging.DEBUG
        with pytest.raises(ValueError, match="log format must be one of text, json"):
            configure_logging("INFO", "applier", "xml")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("order 12 4111 1111 1111 1111 2", f"order 12 {CARD_NUMBER_MASK} 2"),
        ("4111-1111-1111-1111/378282246310005", f"{CARD_NUMBER_MASK}/{CARD_NUMBER_MASK}"),
        ("ids 4111111111111111x5", f"ids {CARD_NUMBER_MASK}x5"),
        # Not ASCII digits: no card number, and no error either.
        ("٤١١١٤١١١٤١١١٤١١١", "٤١١١٤١١١٤١١١٤١١١"),
        ("offset 4111111111111112 of 12", "offset 4111111111111112 of 12"),
    ],
)
def test_mask_finds_card_numbers_between_other_numbers(text: str, expected: str) -> None:
    assert mask_card_numbers(text) == expected


# -- property: no Luhn-valid 12-19 digit number reaches a line -----------------------------------


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    length = draw(st.integers(min_value=12, max_value=19))
    body = draw(st.text(alphabet=ASCII_DIGITS, min_size=length - 1, max_size=length - 1))
    return with_check_digit(body)


@st.composite
def written_cards(draw: st.DrawFn) -> tuple[str, str]:
    """A card number and how it is written: plain, or in groups split by spaces or dashes."""
    card = draw(card_numbers())
    separator = draw(st.sampled_from(["", " ", "-"]))
    size = draw(st.integers(min_value=3, max_value=6))
    written = separator.join(card[i : i + size] for i in range(0, len(card), size))
    return card, written


def _not_touching_digits(prefix: str, suffix: str) -> tuple[str, str]:
    """Surrounding text whose characters next to the card are not ASCII digits.

    A card glued to further digits is a longer number: any long enough run of digits "contains"
    some Luhn-valid one, so that is not what a card number in a log line means.
    """
    if prefix and prefix[-1] in ASCII_DIGITS:
        prefix += "#"
    if suffix and suffix[0] in ASCII_DIGITS:
        suffix = "#" + suffix
    return prefix, suffix


# Any text, and often other numbers right next to the card ("order 12 4111 1111 1111 1111").
SURROUNDINGS = st.text(max_size=40) | st.text(alphabet=ASCII_DIGITS + " -=:/x", max_size=16)
PLACES = ("message", "argument", "integer argument", "extra", "integer extra", "exception")


@settings(max_examples=300, deadline=None)
@given(
    card=written_cards(),
    prefix=SURROUNDINGS,
    suffix=SURROUNDINGS,
    place=st.sampled_from(PLACES),
)
def test_no_card_number_reaches_a_log_line(
    card: tuple[str, str], prefix: str, suffix: str, place: str
) -> None:
    digits, written = card
    assert luhn_valid(digits)
    prefix, suffix = _not_touching_digits(prefix, suffix)
    embedded = prefix + written + suffix
    with captured_logger() as captured:
        _log_with_card(captured.logger, place, embedded, digits)
        text_lines, json_lines = captured.lines()
    for line in text_lines + json_lines:
        assert written not in line
        assert digits not in line
    for line in json_lines:
        assert isinstance(json.loads(line), dict)
    # A leading zero is not written by int(), so no card number was there to mask.
    if not (place.startswith("integer") and digits.startswith("0")):
        assert CARD_NUMBER_MASK in "\n".join(text_lines)
        assert CARD_NUMBER_MASK in "\n".join(json_lines)


def _log_with_card(logger: logging.Logger, place: str, embedded: str, digits: str) -> None:
    if place == "message":
        logger.warning(embedded)
    elif place == "argument":
        logger.warning("value %s seen", embedded)
    elif place == "integer argument":
        logger.warning("value %d seen", int(digits))
    elif place == "extra":
        logger.warning("request rejected", extra={"account_id": embedded})
    elif place == "integer extra":
        logger.warning("record skipped", extra={"offset": int(digits)})
    else:
        try:
            raise ValueError(embedded)
        except ValueError:
            logger.exception("request failed")
