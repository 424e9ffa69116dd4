"""Where a service's time goes: py-spy samples its Python stacks while a scenario runs.

`StackSampler` runs `py-spy record` against a service process (non-blocking: the process is never
paused) and, once stopped, summarises the collapsed stacks per function: the share of samples
whose stack passes through it (inclusive) and the share in which it is the innermost frame
(self). The benchmark report shows the largest of both for the processes that set its limits.
py-spy comes with the `bench` extra; without it, or without the permission to read another
process's memory, the summary says why no profile was taken and the benchmark goes on.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

SAMPLES_PER_SECOND = 100
TOP_FUNCTIONS = 12
# A function in at least this share of the samples is an entry point or the service's loop.
ENTRY_SHARE = 0.95
STOP_TIMEOUT_SECONDS = 30.0
# How long `start()` waits for py-spy to say it samples. Until then py-spy has no SIGINT handler:
# a stop that came first would kill it before it wrote anything.
READY_TIMEOUT_SECONDS = 10.0
# What py-spy prints once it samples.
_READY_LINE = b"Sampling process"


def py_spy_path() -> str | None:
    """py-spy beside this interpreter (the project's virtualenv), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class StackSampler:
    """py-spy sampling one process from `start()` to `stop()`."""

    def __init__(self, name: str, pid: int, output: Path) -> None:
        self.name = name
        self.pid = pid
        self.output = output
        self._process: subprocess.Popen[bytes] | None = None
        self._error: str | None = None

    def start(self) -> None:
        executable = py_spy_path()
        if executable is None:
            self._error = "py-spy is not installed (pip install -e '.[bench]')"
            return
        self.output.parent.mkdir(parents=True, exist_ok=True)
        command = [
            executable,
            "record",
            "--pid",
            str(self.pid),
            "--rate",
            str(SAMPLES_PER_SECOND),
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(self.output),
        ]
        log_path = self.output.with_suffix(".log")
        with log_path.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while self._process.poll() is None and time.monotonic() < deadline:
            if _READY_LINE in log_path.read_bytes():
                return
            time.sleep(0.02)

    def stop(self) -> dict[str, Any]:
        """Stop sampling; the summary of what was sampled (or why nothing was)."""
        process = self._process
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._error is None and not self.output.exists():
            log = self.output.with_suffix(".log")
            reason = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
            self._error = "py-spy wrote no samples" + (f": {reason[-1]}" if reason else "")
        if self._error is not None:
            return {"process": self.name, "error": self._error}
        return {"process": self.name, **summarise(self.output.read_text(errors="replace"))}


def summarise(collapsed: str, *, top: int = TOP_FUNCTIONS) -> dict[str, Any]:
    """Per function (name and file, lines merged): inclusive and self shares of the samples."""
    inclusive: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";")]
        # The first frames name the process and thread, not code.
        frames = [frame for frame in frames if frame]
        if not frames:
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        innermost[frames[-1]] += count
    if not total:
        return {"samples": 0, "inclusive": [], "self": []}

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        # Inclusive: txguard's own functions, without the entry points and the service's loop,
        # which (nearly) every sample passes.
        return [
            {"function": name, "share": round(count / total, 4)}
            for name, count in counter.most_common()
            if counter is innermost or ("txguard/" in name and count < ENTRY_SHARE * total)
        ][:top]

    return {"samples": total, "inclusive": shares(inclusive), "self": shares(innermost)}


def _function(frame: str) -> str:
    """`name (path/to/file.py:123)` -> `name (txguard/pkg/file.py)`; '' for non-code frames."""
    name, _, where = frame.partition(" (")
    if not where:
        return ""
    path = where.rstrip(")").rsplit(":", 1)[0]
    marker = path.find("txguard/")
    short = path[marker:] if marker >= 0 else Path(path).name
    return f"{name} ({short})"
