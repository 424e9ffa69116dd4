"""Wakes an outbox relay in another process as soon as a commit has added outbox events.

The bell is a datagram socket in Linux's abstract namespace, named after the store's resolved
path: the relay listens on it, and every commit that adds outbox events sends it one byte. Nothing
is created on disk, so nothing is left behind by a crash. A ring with nobody listening costs one
failed send; a ring while the relay is busy stays queued in its socket until it next waits, so
no commit goes unnoticed. Where abstract sockets do not exist, `listen()` returns False and the
relay finds new events by polling.
"""

from __future__ import annotations

import hashlib
import select
import socket
from pathlib import Path

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
        self._address = bell_address(path)
        self._sender = _datagram_socket()
        self._listener: socket.socket | None = None

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
        except OSError:
            listener.close()
            return False
        self._listener = listener
        return True

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def wait(self, timeout: float) -> bool:
        """Wait (listening) for a ring or `timeout`; True if rung. Clears the queued rings."""
        listener = self._listener
        if listener is None:
            raise RuntimeError("the outbox bell is not listened to: call listen() first")
        ready, _, _ = select.select([listener], [], [], timeout)
        if not ready:
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

    def __del__(self) -> None:
        # The bell of a store lives as long as the store's connections in this process do.
        self.close()


def _datagram_socket() -> socket.socket | None:
    family = getattr(socket, "AF_UNIX", None)
    if family is None:
        return None
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock
