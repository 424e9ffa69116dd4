"""The one wall clock. Features never read it: they use each transaction's event time."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp


def now_us() -> int:
    """Microseconds since the Unix epoch."""
    return time.time_ns() // 1000


def set_timestamp_us(stamp: Timestamp, micros: int) -> None:
    """Set a Protobuf Timestamp field in place from microseconds since the epoch."""
    stamp.seconds, rest = divmod(micros, 1_000_000)
    stamp.nanos = rest * 1000


def timestamp_from_us(micros: int) -> Timestamp:
    stamp = Timestamp()
    set_timestamp_us(stamp, micros)
    return stamp
