"""A logging filter that lets one line of a kind through per window and counts the others.

librdkafka retries a broker that refuses connections every few tens of milliseconds and logs every
attempt: a detector logged about 24 lines a second while its broker was down (its consumer,
producer and table reader, each to the bootstrap address and to the broker). `RepeatedLines`,
attached to the librdkafka logger (`txguard.kafka.librdkafka`), passes the first line of a kind,
drops its repeats for `window_seconds`, and adds to the next one passed how many were dropped:
`... (and 239 more like it in the last 30 s)`. Lines of a kind have the same level and the same
text once durations (`after 0ms`, `10014 ms`) are left out.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

WINDOW_SECONDS: Final = 30.0
# Kinds remembered at most; beyond it the ones whose window has passed are forgotten.
_MAX_KINDS: Final = 1000
_DURATION = re.compile(r"\d+(?:\.\d+)?\s?ms\b")


@dataclass
class _Kind:
    passed_at: float
    dropped: int = 0


class RepeatedLines(logging.Filter):
    """Passes one record of a kind per `window_seconds`; the next one passed tells the count."""

    def __init__(
        self, window_seconds: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window_seconds = window_seconds
        self._clock = clock
        self._kinds: dict[tuple[int, str], _Kind] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        key = (record.levelno, _DURATION.sub("ms", message))
        now = self._clock()
        with self._lock:
            kind = self._kinds.get(key)
            if kind is not None and now - kind.passed_at < self.window_seconds:
                kind.dropped += 1
                return False
            dropped = kind.dropped if kind is not None else 0
            if len(self._kinds) >= _MAX_KINDS:
                self._forget_before(now - self.window_seconds)
            self._kinds[key] = _Kind(passed_at=now)
        if dropped:
            record.msg = (
                f"{message} (and {dropped} more like it in the last {self.window_seconds:g} s)"
            )
            record.args = None
        return True

    def _forget_before(self, horizon: float) -> None:
        for key in [k for k, kind in self._kinds.items() if kind.passed_at < horizon]:
            del self._kinds[key]
