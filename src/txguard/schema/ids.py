"""Identifiers: UUIDs written as 32 hex digits, without dashes.

The last group of a dashed UUID is 12 hex characters, now and then all decimal digits and then
one time in ten Luhn-valid: a data-loss scanner would flag it as a card number. Without dashes an
identifier is never a standalone run of 12-19 digits.
"""

from __future__ import annotations

import os
import threading
from typing import Final

# Random bytes for transaction and event ids are drawn from the OS this many at a time: every
# os.urandom call releases and re-takes the GIL, which stalls the event loop for as long as the
# writer thread holds it.
_POOL_BYTES: Final = 8192


class _RandomPool:
    """Slices of one os.urandom draw, never handed out twice (locked; reset in a forked child)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._offset = 0
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._offset = 0

    def take(self, count: int) -> bytes:
        with self._lock:
            start = self._offset
            if start + count > len(self._pool):
                self._pool = os.urandom(max(_POOL_BYTES, count))
                start = 0
            self._offset = start + count
            return self._pool[start : start + count]


_random = _RandomPool()


def _v4(raw: bytearray) -> bytearray:
    raw[6] = 0x40 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return raw


def _v7(unix_ms: bytes, rand: bytes) -> str:
    raw = bytearray(unix_ms + rand)
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return raw.hex()


def new_random_id() -> str:
    """A random (version 4) UUID."""
    return _v4(bytearray(os.urandom(16))).hex()


def new_random_ids(count: int) -> list[str]:
    """`count` random (version 4) UUIDs, from one call for random bytes."""
    raw = bytearray(os.urandom(16 * count))
    return [_v4(raw[start : start + 16]).hex() for start in range(0, 16 * count, 16)]


def new_transaction_and_event_ids(now_us: int) -> tuple[str, str]:
    """A transaction id and an event id, both UUIDv7, from the pool of random bytes.

    Both are time-ordered (48-bit Unix milliseconds first): inserts into the transactions' primary
    key and the outbox's unique event-id index land at the right edge of their B-trees instead of
    scattering over them as random UUIDs do. Within one millisecond the order is random; the ids
    are unique by their 74 random bits.
    """
    unix_ms = ((now_us // 1000) & 0xFFFF_FFFF_FFFF).to_bytes(6, "big")
    rand = _random.take(20)
    return _v7(unix_ms, rand[:10]), _v7(unix_ms, rand[10:])
