"""Reading the JSON log lines of the services the benchmark started (TXGUARD_LOG_FORMAT=json)."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

_ASSIGNED = re.compile(
    r"^assigned partitions \[([0-9, ]*)\]; restored (\d+) account states in ([0-9.]+) s"
)
_REVOKED = re.compile(r"^revoked partitions \[([0-9, ]*)\]")
_STOPPED_PREFIX = "fraud detector stopped: "


@dataclass(frozen=True)
class LogLine:
    time: float  # seconds since the epoch
    message: str


def log_lines(path: Path) -> Iterator[LogLine]:
    """Every JSON line of a service log; other lines (a crash's raw output) are skipped."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return
    for raw in text.splitlines():
        if not raw.startswith("{"):
            continue
        try:
            line = json.loads(raw)
            moment = datetime.fromisoformat(line["time"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        yield LogLine(moment, str(line.get("message", "")))


@dataclass(frozen=True)
class Assignment:
    time: float
    partitions: tuple[int, ...]
    restored_accounts: int
    restore_seconds: float


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def assignments(path: Path) -> list[Assignment]:
    found: list[Assignment] = []
    for line in log_lines(path):
        match = _ASSIGNED.match(line.message)
        if match:
            found.append(Assignment(line.time, _numbers(match[1]), int(match[2]), float(match[3])))
    return found


def revocations(path: Path) -> list[tuple[float, tuple[int, ...]]]:
    return [
        (line.time, _numbers(match[1]))
        for line in log_lines(path)
        if (match := _REVOKED.match(line.message))
    ]


def detector_stop_stats(path: Path) -> dict[str, Any] | None:
    """The counters the detector logs when it stops (accounts, state_bytes_per_account, ...)."""
    stats = None
    for line in log_lines(path):
        if line.message.startswith(_STOPPED_PREFIX):
            try:
                parsed = ast.literal_eval(line.message[len(_STOPPED_PREFIX) :])
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, dict):
                stats = parsed
    return stats
