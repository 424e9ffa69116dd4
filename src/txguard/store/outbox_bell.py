"""Wakes an outbox relay in another process as soon as a commit has added outbox events.

The bell is a datagram socket in Linux's abstract namespace, named after the store's resolved
path: the relay listens on it, and every commit that adds outbox events in a process without a
listening relay sends it one byte (a commit beside its relay wakes it directly). Nothing
is created on disk, so nothing is left behind by a crash. A ring with nobody listening costs one
failed send; a ring while the relay is busy stays queued in its socket until it next waits, so
no commit goes unnoticed. Where abstract sockets do not exist, `listen()` returns False and the
relay finds new events by polling.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import select
import socket
from pathlib import Path

log = logging.getLogger(__name__)

_PREFIX = b"\0txguard-outbox-"
# Queued rings read per wake-up: one is enough to wake, the rest only need clearing.
_DRAIN_BYTES = 4096


def bell_address(path: Path) -> bytes:
    """The abstract socket address of the store at `path` (the same from every process)."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
    return _PREFIX + digest.encode()


class OutboxBell:
    """Rings (any process that commits) and listens (the one relay publishing the store)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._address = bell_address(path)
        self._sender = _datagram_socket()
        self._listener: socket.socket | None = None
        self._poller: select.poll | None = None
        self._taken_logged = False

    def ring(self) -> None:
        """Tell a listening relay that events were committed; never blocks, never fails."""
        if self._sender is None:
            return
        try:
            self._sender.sendto(b"\x01", self._address)
        except OSError:
            # Nobody listening (refused), or the relay's queue is full: it has rings pending.
            pass

    def listen(self) -> bool:
        """Start listening; False if another process listens already or there is no bell here."""
        if self._listener is not None:
            return True
        listener = _datagram_socket()
        if listener is None:
            return False
        try:
            listener.bind(self._address)
        except OSError as exc:
            listener.close()
            if exc.errno == errno.EADDRINUSE and not self._taken_logged:
                self._taken_logged = True
                log.warning(
                    "the outbox bell of %s is taken by another process (a relay of this store "
                    "still running?); this relay finds new events by polling",
                    self._path,
                )
            return False
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        self._listener, self._poller = listener, poller
        return True

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def wait(self, timeout: float) -> bool:
        """Wait (listening) for a ring or `timeout`; True if rung. Clears the queued rings."""
        listener, poller = self._listener, self._poller
        if listener is None or poller is None:
            raise RuntimeError("the outbox bell is not listened to: call listen() first")
        # poll(), not select(): the listener's descriptor may be above select()'s 1024.
        if not poller.poll(math.ceil(max(0.0, timeout) * 1000)):
            return False
        try:
            while listener.recv(_DRAIN_BYTES):
                pass
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        for sock in (self._sender, self._listener):
            if sock is not None:
                sock.close()
        self._sender = self._listener = None
        self._poller = None

    def __del__(self) -> None:
        # The bell of a store lives as long as the store's connections in this process do.
        self.close()


def _datagram_socket() -> socket.socket | None:
    """A non-blocking Unix datagram socket; None where there is none (or none to be had)."""
    family = getattr(socket, "AF_UNIX", None)
    if family is None or not hasattr(select, "poll"):
        return None
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        log.warning("no outbox bell (%s): the relay finds new events by polling", exc)
        return None
    sock.setblocking(False)
    return sock
