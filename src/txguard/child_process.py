"""Child processes that must not outlive the process that started them.

A broker started for one test session or one benchmark run is stopped by that process on the way
out; when the process is killed instead (SIGKILL, a timeout), nothing would stop it. With
`tied_to_this_process()` as the child's `preexec_fn`, the kernel kills the child too (Linux's
parent-death signal; elsewhere the child simply outlives its parent, as before).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
# Loaded here, in the parent: the child runs the preexec function between fork and exec, where
# loading a library is not safe.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def tied_to_this_process() -> Callable[[], None] | None:
    """A `preexec_fn` that has the child SIGKILLed when this process (its starting thread) ends.

    None where the platform has no parent-death signal. The child checks its parent once armed:
    if the parent died before that, it exits at once instead of running untied.
    """
    if _LIBC is None:
        return None
    parent = os.getpid()
    prctl = _LIBC.prctl

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return arm
