"""Child processes that must not outlive the process that started them.

A broker started for one test session or one benchmark run is stopped by that process on the way
out; when the process is killed instead (SIGKILL, a timeout), nothing would stop it. A command
wrapped by `tied_command()` is killed by the kernel too (Linux's parent-death signal). Elsewhere
the command runs unwrapped and simply outlives its parent, as before.

The signal is armed by a small Python step that then executes the command in its place (same
process id), not in a `preexec_fn`, which is unsafe in a process with threads.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence

# argv: parent pid, then the command. Exits 1 if the parent is already gone once armed.
_ARM_AND_EXEC = """
import ctypes, os, signal, sys
PR_SET_PDEATHSIG = 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
    print("parent-death signal not set: errno", ctypes.get_errno(), file=sys.stderr, flush=True)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def tied_command(command: Sequence[str]) -> list[str]:
    """`command`, run so that it is SIGKILLed when this process ends first (Linux).

    The kernel ties the child to the thread that starts it, so only the main thread may: a
    worker thread's end would kill it mid-run.
    """
    if not sys.platform.startswith("linux"):
        return list(command)
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("a tied child must be started from the main thread")
    return [sys.executable, "-c", _ARM_AND_EXEC, str(os.getpid()), *command]
