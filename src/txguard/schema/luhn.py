"""The Luhn checksum of card numbers (ISO/IEC 7812)."""

from __future__ import annotations


def _luhn_sum(digits: str, *, double_first: bool) -> int:
    total = 0
    double = double_first
    for char in reversed(digits):
        value = ord(char) - 48
        if double:
            value *= 2
            if value > 9:
                value -= 9
        total += value
        double = not double
    return total


def luhn_valid(digits: str) -> bool:
    """True when the all-digit string passes the Luhn check."""
    return _luhn_sum(digits, double_first=False) % 10 == 0


def luhn_check_digit(partial: str) -> str:
    """The digit that, appended to the all-digit string `partial`, makes it Luhn-valid."""
    return str((10 - _luhn_sum(partial, double_first=True) % 10) % 10)
