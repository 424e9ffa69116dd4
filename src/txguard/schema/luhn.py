"""The Luhn checksum of card numbers (ISO/IEC 7812)."""

from __future__ import annotations

# Digit -> digit sum of its double, for the digits in doubled positions.
_DOUBLED = str.maketrans("0123456789", "0246813579")


def _luhn_sum(digits: str) -> int:
    """From the right, every second digit doubled; all of it runs in C, no loop per digit."""
    reversed_digits = digits[::-1]
    kept = reversed_digits[0::2]
    doubled = reversed_digits[1::2].translate(_DOUBLED)
    return sum(kept.encode("ascii")) + sum(doubled.encode("ascii")) - 48 * len(digits)


def luhn_valid(digits: str) -> bool:
    """True when the string of ASCII digits passes the Luhn check."""
    return _luhn_sum(digits) % 10 == 0


def luhn_check_digit(partial: str) -> str:
    """The digit that, appended to the ASCII-digit string `partial`, makes it Luhn-valid."""
    return str((10 - _luhn_sum(partial + "0") % 10) % 10)


def with_check_digit(partial: str) -> str:
    """`partial` followed by its Luhn check digit."""
    return partial + luhn_check_digit(partial)
