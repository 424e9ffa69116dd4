"""The one wall clock. Features never read it: they use each transaction's event time."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp


def now_us() -> int:
    """Microseconds since the Unix epoch."""
    return time.time_ns() // 1000


def timestamp_from_us(micros: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMicroseconds(micros)
    return stamp
