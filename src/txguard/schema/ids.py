"""Identifiers: UUIDs written as 32 hex digits, without dashes.

Hex digits are decimal digits more often than not, so a random UUID now and then holds a run of
12 or more decimal digits, one time in ten Luhn-valid: log masking would replace it (it masks such
runs wherever they stand) and a data-loss scanner would flag it as a card number. An identifier
made here never holds such a run: the random bits are drawn again in the rare case (about 3%)
they would.
"""

from __future__ import annotations

import os
import re
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
# What a card number could be made of: 12 or more decimal digits in a row.
_CARD_DIGITS: Final = 12
_DIGIT_RUN: Final = re.compile(r"[0-9]{12,}")
# Hex written as marks, 1 for a decimal digit and 0 for a letter: a run of 12 ones is a run of
# 12 digits, which bytes.find locates in all of a batch's ids at once.
_DIGIT_MARKS: Final = bytes.maketrans(b"0123456789abcdef", b"1111111111000000")
_MARKED_RUN: Final = b"1" * _CARD_DIGITS
_ID_HEX: Final = 32


def _card_like(identifier: str) -> bool:
    return _DIGIT_RUN.search(identifier) is not None


# Byte translations that set a UUID's version (4) and variant bits, for many ids at once.
_VERSION_4: Final = bytes(0x40 | (byte & 0x0F) for byte in range(256))
_VARIANT_RFC_4122: Final = bytes(0x80 | (byte & 0x3F) for byte in range(256))


def _v4(raw: bytearray) -> bytearray:
    raw[6] = 0x40 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return raw


def new_random_id() -> str:
    """A random (version 4) UUID."""
    while _card_like(identifier := _v4(bytearray(os.urandom(16))).hex()):
        pass
    return identifier


def new_random_ids(count: int) -> list[str]:
    """`count` random (version 4) UUIDs, from one call for random bytes."""
    return [identifier.decode() for identifier in new_random_ascii_ids(count)]


def new_random_ascii_ids(count: int) -> list[bytes]:
    """`count` random (version 4) UUIDs as ASCII bytes, ready for the wire.

    The hex of all of them is written and searched at once; ids holding 12 decimal digits in a
    row are drawn again, all at once the same way.
    """
    raw = bytearray(_random.take(16 * count))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_VARIANT_RFC_4122)
    text = raw.hex().encode()
    identifiers = [text[start : start + _ID_HEX] for start in range(0, _ID_HEX * count, _ID_HEX)]
    card_like = _card_like_indices(text)
    if card_like:
        for index, identifier in zip(card_like, new_random_ascii_ids(len(card_like)), strict=True):
            identifiers[index] = identifier
    return identifiers


def _card_like_indices(text: bytes) -> list[int]:
    """The indices of the 32-character hex ids laid end to end in `text` that hold a run of 12
    decimal digits.

    The first run found at or after an id's start is inside the id, or crosses into the next
    one: then so does every later run that starts in the id. Either way the search goes on at
    the next id.
    """
    marks = text.translate(_DIGIT_MARKS)
    found = []
    start = 0
    while (start := marks.find(_MARKED_RUN, start)) >= 0:
        index = start // _ID_HEX
        if start % _ID_HEX <= _ID_HEX - _CARD_DIGITS:
            found.append(index)
        start = (index + 1) * _ID_HEX
    return found


def new_transaction_and_event_ids(now_us: int) -> tuple[str, str]:
    """A transaction id and an event id, both UUIDv7, from the pool of random bytes.

    Both are time-ordered (48-bit Unix milliseconds first): inserts into the transactions' primary
    key and the outbox's unique event-id index land at the right edge of their B-trees instead of
    scattering over them as random UUIDs do. Within one millisecond the order is random; the ids
    are unique by their 74 random bits.
    """
    unix_ms = (now_us // 1000) & 0xFFFF_FFFF_FFFF
    # The 48-bit milliseconds and the version digit, shared by both. When all 12 digits of the
    # milliseconds are decimal (2.3% of the milliseconds from mid-2024 to mid-2025, again from
    # 2039), no random bits could make an id that is not card-like: the ids take the next
    # millisecond written with a letter, at most ten later.
    while _card_like(head := format(unix_ms, "012x") + "7"):
        unix_ms = (unix_ms + 1) & 0xFFFF_FFFF_FFFF
    return _new_v7(head), _new_v7(head)


# The variant digit (binary 10xx) from two random bits.
_VARIANT_DIGITS: Final = "89ab"


def _new_v7(head: str) -> str:
    """`head` and 74 random bits, written as hex directly (10 random bytes: the version digit
    replaces the high half of the first, the variant bits the top two of the third)."""
    while True:
        rand = _random.take(10)
        digits = rand.hex()
        identifier = head + digits[1:4] + _VARIANT_DIGITS[(rand[2] >> 4) & 3] + digits[5:]
        if not _card_like(identifier):
            return identifier
