"""Process-wide logging set-up: text or JSON lines, with a last line of defence that masks cards.

Two formats (`TXGUARD_LOG_FORMAT`):
- `text` (default): `time level service logger: message key=value ...`, then any traceback;
- `json`: one object per line with `time` (ISO-8601, UTC), `level`, `service`, `logger`,
  `message`, every `extra` field, and `exception` (the traceback) when there is one.

What a line is about travels as `extra` fields (`event_id`, `transaction_id`, `account_id`,
`topic`, `partition`, `offset`, ...), so a log search can filter on them in either format.

The code never logs a card number; `CardNumberMaskingFilter` is the backstop. It masks every
Luhn-valid 12-19 digit number in the message, its arguments, the extra fields, the exception text
and the stack, before any formatter sees the record; each formatter masks its output once more.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final, TextIO

from txguard.schema.luhn import luhn_valid

LOG_FORMATS: Final = ("text", "json")
CARD_NUMBER_MASK: Final = "[card-number-masked]"

# A run of ASCII digits in which single spaces or dashes may separate groups, as cards are written.
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9])*")
_DIGIT_GROUP = re.compile(r"[0-9]+")
_CARD_MIN_DIGITS: Final = 12
_CARD_MAX_DIGITS: Final = 19

# Attributes every LogRecord has; anything else on a record came in through `extra`.
_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}
_JSON_FIELDS: Final = ("time", "level", "service", "logger", "message", "exception", "stack")
# Formats tracebacks for the filter, exactly as the standard formatters would.
_TRACEBACK_FORMATTER: Final = logging.Formatter()


def mask_card_numbers(text: str) -> str:
    """Replace every Luhn-valid 12-19 digit number in `text` by a fixed mask.

    A number counts when it is delimited by anything but a digit; within a run of numbers
    separated by single spaces or dashes ("order 12 4111 1111 1111 1111"), every sequence of
    whole groups is checked, so a card next to another number is masked too.
    """
    return _DIGIT_RUN.sub(_mask_run, text)


def _mask_run(match: re.Match[str]) -> str:
    run = match.group(0)
    groups = list(_DIGIT_GROUP.finditer(run))
    if sum(len(group.group()) for group in groups) < _CARD_MIN_DIGITS:
        return run
    spans: list[tuple[int, int]] = []
    first = 0
    while first < len(groups):
        last = _longest_card_from(groups, first)
        if last is None:
            first += 1
            continue
        spans.append((groups[first].start(), groups[last].end()))
        first = last + 1
    if not spans:
        return run
    pieces: list[str] = []
    position = 0
    for start, end in spans:
        pieces.append(run[position:start])
        pieces.append(CARD_NUMBER_MASK)
        position = end
    pieces.append(run[position:])
    return "".join(pieces)


def _longest_card_from(groups: list[re.Match[str]], first: int) -> int | None:
    """Index of the last group of the longest card number starting at group `first`, if any."""
    found: int | None = None
    digits = ""
    for index in range(first, len(groups)):
        digits += groups[index].group()
        if len(digits) > _CARD_MAX_DIGITS:
            break
        if len(digits) >= _CARD_MIN_DIGITS and luhn_valid(digits):
            found = index
    return found


def masked_value(value: object) -> object:
    """`value` with card numbers masked: strings are masked in place, anything else whose text
    holds a card number becomes its masked text (an integer extra can be a card number too)."""
    if isinstance(value, str):
        return mask_card_numbers(value)
    if value is None or isinstance(value, bool):
        return value
    text = str(value)
    masked = mask_card_numbers(text)
    return value if masked == text else masked


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields a log call added with `extra=`, in the order they were given."""
    return {
        name: value
        for name, value in vars(record).items()
        if name not in _RECORD_ATTRIBUTES and not name.startswith("_")
    }


class CardNumberMaskingFilter(logging.Filter):
    """Masks card numbers in the whole record; the code never logs one, this is a backstop."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # A call whose arguments do not fit its format would otherwise reach logging's error
            # report, which prints the raw arguments to stderr.
            message = f"{record.msg!s} (log arguments did not fit the message: {record.args!r})"
            record.msg, record.args = message, None
        masked = mask_card_numbers(message)
        if masked != message:
            record.msg = masked
            record.args = None
        for name, value in extra_fields(record).items():
            replacement = masked_value(value)
            if replacement is not value:
                setattr(record, name, replacement)
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACK_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_card_numbers(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_card_numbers(record.stack_info)
        return True


class TextFormatter(logging.Formatter):
    """`time level service logger: message key=value ...`, then any traceback."""

    def __init__(self, service: str) -> None:
        escaped = service.replace("%", "%%")
        super().__init__(f"%(asctime)s %(levelname)s {escaped} %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        extras = extra_fields(record)
        if extras:
            line += " " + " ".join(f"{name}={_text_value(value)}" for name, value in extras.items())
        return line

    def format(self, record: logging.LogRecord) -> str:
        return mask_card_numbers(super().format(record))


def _text_value(value: object) -> str:
    text = str(value)
    if not text or any(char.isspace() or char in '="' for char in text):
        return json.dumps(text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message, extras, exception."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _utc_iso8601(record.created),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": mask_card_numbers(record.getMessage()),
        }
        for name, value in extra_fields(record).items():
            # The fixed fields keep their meaning; a clashing extra keeps its value under a prefix.
            key = f"extra_{name}" if name in _JSON_FIELDS else name
            entry[key] = _json_value(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = mask_card_numbers(record.exc_text)
        if record.stack_info:
            entry["stack"] = mask_card_numbers(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=True)


def _utc_iso8601(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _json_value(value: object) -> object:
    """A JSON scalar with card numbers masked; anything else is written as its text."""
    if isinstance(value, float) and not math.isfinite(value):
        value = str(value)
    elif not isinstance(value, str | int | float | bool) and value is not None:
        value = str(value)
    return masked_value(value)


def make_handler(service: str, log_format: str, stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr by default) in `log_format`, with card numbers masked."""
    formatters: Mapping[str, logging.Formatter] = {
        "text": TextFormatter(service),
        "json": JsonFormatter(service),
    }
    if log_format not in formatters:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(formatters[log_format])
    handler.addFilter(CardNumberMaskingFilter())
    return handler


def configure_logging(level: str, service: str, log_format: str = "text") -> None:
    """Every record of the process goes to stderr, in `log_format` ("text" or "json")."""
    root = logging.getLogger()
    root.handlers[:] = [make_handler(service, log_format)]
    root.setLevel(level)
