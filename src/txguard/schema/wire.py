"""Protobuf's wire format written by hand, where building a message object costs too much.

Field by field, as the protobuf library writes it: tests compare the bytes with its own.
"""

from __future__ import annotations

SMALL_VARINTS = [bytes([n]) for n in range(0x80)]


def varint(value: int) -> bytes:
    """Base-128 varint; a negative int64 as its 64-bit two's complement (10 bytes)."""
    if 0 <= value < 0x80:
        return SMALL_VARINTS[value]
    # Up to five bytes written out: lengths, and the seconds and nanos of timestamps.
    if 0 < value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if 0 < value < 0x20_0000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    if 0 < value < 0x1000_0000:
        return bytes(
            (value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14 & 0x7F | 0x80, value >> 21)
        )
    if 0 < value < 0x8_0000_0000:
        return bytes(
            (
                value & 0x7F | 0x80,
                value >> 7 & 0x7F | 0x80,
                value >> 14 & 0x7F | 0x80,
                value >> 21 & 0x7F | 0x80,
                value >> 28,
            )
        )
    value &= 0xFFFF_FFFF_FFFF_FFFF
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(tag: bytes, data: bytes) -> bytes:
    """A bytes, string or sub-message field: its tag, the length, the data."""
    size = len(data)
    return tag + (SMALL_VARINTS[size] if size < 0x80 else varint(size)) + data
