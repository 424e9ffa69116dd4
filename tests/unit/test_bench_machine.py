"""What the benchmark reads of each process, and the costs per transaction it reports."""

from __future__ import annotations

import os
import threading

from txguard.bench.end_to_end import per_transaction_costs
from txguard.bench.machine import (
    ProcessUsage,
    process_usage,
    usage_between,
    wake_up_round_trip_us,
)


def test_a_process_reading_counts_the_context_switches_of_its_threads() -> None:
    before = process_usage(os.getpid())
    assert before is not None
    # A thread that sleeps and is woken 50 times switches out and back in at least 50 times.
    woken = threading.Event()
    done = threading.Event()

    def sleeper() -> None:
        for _ in range(50):
            woken.wait()
            woken.clear()
            done.set()

    thread = threading.Thread(target=sleeper)
    thread.start()
    for _ in range(50):
        done.clear()
        woken.set()
        done.wait()
    after = process_usage(os.getpid())
    thread.join()
    assert after is not None
    assert after.context_switches - before.context_switches >= 50
    assert 0 <= after.kernel_cpu_seconds <= after.cpu_seconds


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
