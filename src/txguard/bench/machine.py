"""What the benchmark ran on, and what each process used: CPU time and peak memory from /proc."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

_PROC = Path("/proc")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# /proc/net/tcp state of a listening socket.
_TCP_LISTEN = "0A"


def machine_facts() -> dict[str, Any]:
    """CPU model and cores (from /proc/cpuinfo), memory, kernel and Python."""
    models: list[str] = []
    cores = 0
    try:
        for line in (_PROC / "cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                models.append(value.strip())
            elif name.strip() == "processor":
                cores += 1
    except OSError:
        pass
    return {
        "cpu_model": models[0] if models else platform.processor() or "unknown",
        "cpu_cores": cores or os.cpu_count() or 0,
        "memory_mib": _memory_mib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wake_up_round_trip_us": wake_up_round_trip_us(),
    }


def _memory_mib() -> int | None:
    try:
        for line in (_PROC / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose speed the benchmark measures (in this interpreter)."""
    versions: dict[str, str] = {}
    for name in ("txguard", "confluent-kafka", "protobuf", "grpcio", "numpy", "xgboost-cpu"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import confluent_kafka

        versions["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        pass
    return versions


def git_commit(repository: Path) -> dict[str, Any]:
    """The commit the working tree is at, and whether it has uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(repository), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


@dataclass(frozen=True)
class ProcessUsage:
    """CPU seconds (user + system) a process has used so far, the kernel's (system) part of
    them, its context switches (voluntary and not; per live thread, by thread id, when read
    from /proc) and its peak resident memory."""

    cpu_seconds: float
    peak_rss_mib: float
    kernel_cpu_seconds: float = 0.0
    context_switches: int = 0
    thread_switches: dict[int, int] = field(default_factory=dict)


def process_usage(pid: int) -> ProcessUsage | None:
    """From /proc/<pid>/stat (utime, stime), /proc/<pid>/status (VmHWM) and the context
    switches of its live threads (/proc/<pid>/task/*/status); None if gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
        status = (_PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    kernel = int(fields[12]) / _CLOCK_TICKS
    cpu = int(fields[11]) / _CLOCK_TICKS + kernel
    peak_kib = 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            peak_kib = int(line.split()[1])
            break
    threads = _thread_switches(pid)
    return ProcessUsage(
        cpu_seconds=cpu,
        peak_rss_mib=peak_kib / 1024,
        kernel_cpu_seconds=kernel,
        context_switches=sum(threads.values()),
        thread_switches=threads,
    )


def _thread_switches(pid: int) -> dict[int, int]:
    """Context switches of each of the process's threads alive now, by thread id (Linux keeps
    no count of the threads that have exited)."""
    switches: dict[int, int] = {}
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return switches
    for task in tasks:
        try:
            lines = (task / "status").read_text().splitlines()
        except OSError:
            continue
        switches[int(task.name)] = sum(
            int(line.split()[1])
            for line in lines
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"))
        )
    return switches


def reset_peak_rss(pid: int) -> bool:
    """Start a new peak-memory measurement for `pid` (Linux: write 5 to clear_refs)."""
    try:
        (_PROC / str(pid) / "clear_refs").write_text("5")
    except OSError:
        return False
    return True


def own_usage() -> ProcessUsage:
    """This process: CPU seconds so far and its peak resident memory over its whole life."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return ProcessUsage(
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mib=usage.ru_maxrss / 1024,
        kernel_cpu_seconds=usage.ru_stime,
        context_switches=usage.ru_nvcsw + usage.ru_nivcsw,
    )


# The wake-up measurement: round trips of one byte between this process and a child over pipes,
# timed in a few repeats of which the fastest counts (the least that other work added).
_WAKE_UP_ROUND_TRIPS = 2_000
_WAKE_UP_REPEATS = 3
_ECHO_CHILD = "import os\nwhile os.read(0, 1):\n    os.write(1, b'x')\n"


def wake_up_round_trip_us(round_trips: int = _WAKE_UP_ROUND_TRIPS) -> float | None:
    """Microseconds for one byte to go to another process and back over pipes (the fastest of a
    few repeats): two wake-ups of a sleeping process and their context switches, what every
    hand-over between the pipeline's threads and processes costs at least. None if it could not
    be measured."""
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", _ECHO_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
    except OSError:
        return None
    assert child.stdin is not None and child.stdout is not None
    to_child, from_child = child.stdin.fileno(), child.stdout.fileno()
    try:
        os.write(to_child, b"x")  # The child has started once it answers.
        os.read(from_child, 1)
        elapsed = float("inf")
        for _ in range(_WAKE_UP_REPEATS):
            started = time.perf_counter()
            for _ in range(round_trips):
                os.write(to_child, b"x")
                os.read(from_child, 1)
            elapsed = min(elapsed, time.perf_counter() - started)
    except OSError:
        return None
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        child.stdout.close()
    return round(elapsed / round_trips * 1e6, 1)


def usage_between(before: ProcessUsage, after: ProcessUsage, seconds: float) -> dict[str, float]:
    """What a process used between two readings `seconds` apart: CPU seconds, its share of one
    core, the kernel's part, context switches, and the peak RSS (MiB) of the later reading.

    Read per thread, the context switches are those of the threads alive at the later reading
    since the earlier one (or since they started): a thread that exited in between is missing.
    """
    cpu = after.cpu_seconds - before.cpu_seconds
    if after.thread_switches:
        earlier = before.thread_switches
        switches = sum(
            max(0, count - earlier.get(thread, 0))
            for thread, count in after.thread_switches.items()
        )
    else:
        switches = after.context_switches - before.context_switches
    return {
        "cpu_seconds": round(cpu, 2),
        "cpu_percent": round(100 * cpu / seconds, 1) if seconds > 0 else 0.0,
        "kernel_cpu_seconds": round(after.kernel_cpu_seconds - before.kernel_cpu_seconds, 2),
        "context_switches": switches,
        "peak_rss_mib": round(after.peak_rss_mib, 1),
    }


class UsageMeter:
    """CPU used by a set of processes from `start()` (or the last `mark()`) to `stop()`, and
    their peak memory since `start()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self._before: dict[str, ProcessUsage] = {}
        self._since = time.monotonic()

    def start(self) -> None:
        for pid in self.pids.values():
            reset_peak_rss(pid)
        self.mark()

    def mark(self) -> None:
        """Count CPU from now on (e.g. from the first record processed, after start-up)."""
        self._since = time.monotonic()
        for name, pid in self.pids.items():
            usage = process_usage(pid)
            if usage is not None:
                self._before[name] = usage

    def stop(self, seconds: float | None = None) -> dict[str, dict[str, float]]:
        """Per process, `usage_between` the mark and now, over `seconds` (default: since the
        mark)."""
        if seconds is None:
            seconds = time.monotonic() - self._since
        result: dict[str, dict[str, float]] = {}
        for name, pid in self.pids.items():
            usage = process_usage(pid)
            if usage is None or name not in self._before:
                continue
            result[name] = usage_between(self._before[name], usage, seconds)
        return result


def broker_pid(bootstrap: str) -> int | None:
    """The local broker's process, found by the port of a one-address bootstrap."""
    host, _, port = bootstrap.partition(",")[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]") or not port.isdigit():
        return None
    return pid_listening_on(int(port))


def pid_listening_on(port: int) -> int | None:
    """The process that listens on a local TCP port (e.g. the Kafka broker), when visible."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == _TCP_LISTEN and parts[1].endswith(f":{port:04X}"):
                inodes.add(parts[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                # Closed since the listing (a busy broker opens and closes files all the
                # time): the other descriptors are still worth reading.
                continue
            if target in wanted:
                return int(entry.name)
    return None


def load_average() -> float | None:
    """The 1-minute load average: how busy the machine's cores were with anything at all."""
    try:
        return float((_PROC / "loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
