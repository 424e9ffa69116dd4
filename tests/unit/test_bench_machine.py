"""What the benchmark reads of each process, and the costs per transaction it reports."""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import pytest

from tests.support import wait_until
from txguard.bench.end_to_end import per_transaction_costs
from txguard.bench.machine import (
    ProcessUsage,
    pid_listening_on,
    process_usage,
    usage_between,
    wake_up_round_trip_us,
)


def test_a_process_reading_counts_the_context_switches_of_each_thread() -> None:
    woken = threading.Event()
    answered = threading.Event()
    release = threading.Event()
    thread_id: list[int] = []

    def sleeper() -> None:
        thread_id.append(threading.get_native_id())
        for _ in range(50):
            woken.wait()
            woken.clear()
            answered.set()
        release.wait()  # Alive until both readings are taken.

    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        answered.set()
        wait_until(lambda: bool(thread_id), timeout=10)
        before = process_usage(os.getpid())
        # The thread sleeps until woken, 50 times: it is switched out and in at least 50 times.
        for _ in range(50):
            answered.wait()
            answered.clear()
            woken.set()
        answered.wait()
        after = process_usage(os.getpid())
    finally:
        release.set()
        woken.set()
        thread.join()
    assert before is not None and after is not None
    sleeper_id = thread_id[0]
    assert after.thread_switches[sleeper_id] - before.thread_switches[sleeper_id] >= 50
    assert usage_between(before, after, 1.0)["context_switches"] >= 50
    assert after.context_switches == sum(after.thread_switches.values())
    assert 0 <= after.kernel_cpu_seconds <= after.cpu_seconds


def test_switches_of_threads_started_between_readings_count_whole() -> None:
    before = ProcessUsage(1.0, 10.0, context_switches=15, thread_switches={1: 10, 2: 5})
    after = ProcessUsage(2.0, 10.0, context_switches=37, thread_switches={1: 30, 3: 7})
    # Thread 2 exited (its switches since the first reading are not known); 3 started.
    assert usage_between(before, after, 1.0)["context_switches"] == 20 + 7


def test_usage_between_two_readings() -> None:
    before = ProcessUsage(
        cpu_seconds=10.0, peak_rss_mib=100.0, kernel_cpu_seconds=2.0, context_switches=1_000
    )
    after = ProcessUsage(
        cpu_seconds=13.0, peak_rss_mib=120.0, kernel_cpu_seconds=3.5, context_switches=4_000
    )
    assert usage_between(before, after, 6.0) == {
        "cpu_seconds": 3.0,
        "cpu_percent": 50.0,
        "kernel_cpu_seconds": 1.5,
        "context_switches": 3_000,
        "peak_rss_mib": 120.0,
    }


def test_costs_per_transaction_sum_every_process() -> None:
    usage = {
        "transactions": {"cpu_seconds": 3.0, "kernel_cpu_seconds": 1.0, "context_switches": 600},
        "kafka-broker": {"cpu_seconds": 1.0, "kernel_cpu_seconds": 1.0, "context_switches": 400},
    }
    assert per_transaction_costs(usage, 2_000) == {
        "cpu_ms": 2.0,
        "context_switches": 0.5,
        "kernel_share": 0.5,
    }
    assert per_transaction_costs(usage, 0) is None


def test_a_wake_up_round_trip_is_measured() -> None:
    round_trip = wake_up_round_trip_us(round_trips=200)
    assert round_trip is not None
    assert 0 < round_trip < 100_000


def test_the_listener_is_found_though_one_of_its_descriptors_closes_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_readlink = os.readlink
    own_fds = f"/proc/{os.getpid()}/fd/"
    closed: list[str] = []

    def readlink(path: Any) -> str:
        # The first descriptor of this process read goes away between listing and reading.
        if str(path).startswith(own_fds) and not closed:
            closed.append(str(path))
            raise FileNotFoundError(path)
        return real_readlink(path)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        # Another descriptor, listed before the listener's.
        with open(os.devnull) as _other:
            monkeypatch.setattr("txguard.bench.machine.os.readlink", readlink)
            assert pid_listening_on(port) == os.getpid()
    assert closed
