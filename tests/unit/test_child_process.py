"""A child tied to its parent dies when the parent is SIGKILLed; an untied one lives on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support import wait_until
from txguard.child_process import tied_command

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's"
)

# Starts two sleeping children, one tied to it and one not, prints their pids, then waits.
PARENT = """
import subprocess, sys, time
from txguard.child_process import tied_command
tied = subprocess.Popen(tied_command(["sleep", "600"]))
untied = subprocess.Popen(["sleep", "600"])
print(tied.pid, untied.pid, flush=True)
time.sleep(600)
"""


def dead(pid: int) -> bool:
    """Gone, or a zombie waiting for whoever adopted it to reap it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_a_tied_child_is_killed_with_its_parent_and_an_untied_one_is_not() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    untied_pid = None
    try:
        assert parent.stdout is not None
        tied_pid, untied_pid = (int(pid) for pid in parent.stdout.readline().split())
        assert not dead(tied_pid) and not dead(untied_pid)

        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)

        wait_until(lambda: dead(tied_pid), timeout=30)
        assert not dead(untied_pid)
    finally:
        parent.kill()
        parent.wait(timeout=30)
        if parent.stdout is not None:
            parent.stdout.close()
        if untied_pid is not None and not dead(untied_pid):
            os.kill(untied_pid, signal.SIGKILL)


def test_only_the_main_thread_may_start_a_tied_child() -> None:
    # The kernel would kill the child when the starting thread ends, not the process.
    errors: list[Exception] = []

    def start() -> None:
        try:
            tied_command(["true"])
        except RuntimeError as exc:
            errors.append(exc)

    worker = threading.Thread(target=start)
    worker.start()
    worker.join(timeout=30)
    assert [str(error) for error in errors] == ["a tied child must be started from the main thread"]
    assert tied_command(["true"])[-1] == "true"
