"""Process-wide logging set-up, with a last line of defence that masks card numbers."""

from __future__ import annotations

import logging
import re
import sys

from txguard.schema.luhn import luhn_valid

# 12 to 19 digits, optionally separated by single spaces or dashes, as a card number is written.
_CANDIDATE = re.compile(r"(?<!\d)\d(?:[ -]?\d){11,18}(?!\d)")


def mask_card_numbers(text: str) -> str:
    """Replace every Luhn-valid 12-19 digit number in `text` by a fixed mask."""

    def replace(match: re.Match[str]) -> str:
        digits = re.sub(r"[ -]", "", match.group(0))
        return "[card-number-masked]" if luhn_valid(digits) else match.group(0)

    return _CANDIDATE.sub(replace, text)


class CardNumberMaskingFilter(logging.Filter):
    """Masks card numbers in the formatted message; the code never logs one, this is a backstop."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_card_numbers(message)
        if masked != message:
            record.msg = masked
            record.args = None
        return True


def configure_logging(level: str, service: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
    )
    handler.addFilter(CardNumberMaskingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
