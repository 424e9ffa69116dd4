"""Identifiers: UUIDs written as 32 hex digits, without dashes.

The last group of a dashed UUID is 12 hex characters, now and then all decimal digits and then
one time in ten Luhn-valid: a data-loss scanner would flag it as a card number. Without dashes an
identifier is never a standalone run of 12-19 digits.
"""

from __future__ import annotations

import os


def _v4(raw: bytearray) -> bytearray:
    raw[6] = 0x40 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return raw


def new_random_id() -> str:
    """A random (version 4) UUID."""
    return _v4(bytearray(os.urandom(16))).hex()


def new_random_ids(count: int) -> list[str]:
    """`count` random (version 4) UUIDs, from one call for random bytes."""
    raw = bytearray(os.urandom(16 * count))
    return [_v4(raw[start : start + 16]).hex() for start in range(0, 16 * count, 16)]


def new_transaction_and_event_ids(now_us: int) -> tuple[str, str]:
    """A transaction id (UUIDv7) and an event id (UUIDv4), from one call for random bytes.

    The transaction id is time-ordered (48-bit Unix milliseconds first): primary-key inserts land
    at the right edge of the B-tree instead of scattering over it as random UUIDs do.
    """
    rand = bytearray(os.urandom(26))
    v7 = bytearray(((now_us // 1000) & 0xFFFF_FFFF_FFFF).to_bytes(6, "big")) + rand[:10]
    v7[6] = 0x70 | (v7[6] & 0x0F)
    v7[8] = 0x80 | (v7[8] & 0x3F)
    return v7.hex(), _v4(rand[10:]).hex()
