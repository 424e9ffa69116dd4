"""The outbox bell: a commit in one process wakes the relay listening in another."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import RING_FROM_ANOTHER_PROCESS
from txguard.store.outbox_bell import OutboxBell, bell_address

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="abstract sockets are Linux's"
)


@pytest.fixture
def bells() -> Iterator[list[OutboxBell]]:
    made: list[OutboxBell] = []
    yield made
    for bell in made:
        bell.close()


def make(bells: list[OutboxBell], path: Path) -> OutboxBell:
    bell = OutboxBell(path)
    bells.append(bell)
    return bell


def test_a_ring_with_nobody_listening_is_dropped_without_error(
    tmp_path: Path, bells: list[OutboxBell]
) -> None:
    make(bells, tmp_path / "store.db").ring()


def test_a_ring_from_another_process_wakes_the_listener(
    tmp_path: Path, bells: list[OutboxBell]
) -> None:
    path = tmp_path / "store.db"
    listener = make(bells, path)
    assert listener.listen()
    assert not listener.wait(0)
    subprocess.run(
        [sys.executable, "-c", RING_FROM_ANOTHER_PROCESS, str(path)], check=True, timeout=60
    )
    # Only the other process's ring ends this wait early; without it, it returns False.
    assert listener.wait(60)


def test_rings_while_busy_wake_one_wait_and_are_then_cleared(
    tmp_path: Path, bells: list[OutboxBell]
) -> None:
    path = tmp_path / "store.db"
    listener, ringer = make(bells, path), make(bells, path)
    assert listener.listen()
    for _ in range(500):  # more than the socket queues: the surplus is dropped, not an error
        ringer.ring()
    assert listener.wait(0)
    assert not listener.wait(0)


def test_one_listener_per_store_and_stores_do_not_hear_each_other(
    tmp_path: Path, bells: list[OutboxBell]
) -> None:
    first, second = make(bells, tmp_path / "a.db"), make(bells, tmp_path / "a.db")
    other = make(bells, tmp_path / "b.db")
    assert first.listen()
    assert not second.listen()
    assert other.listen()
    make(bells, tmp_path / "b.db").ring()
    assert not first.wait(0)
    assert other.wait(0)
    first.close()
    assert second.listen()  # the store's bell is free again once its listener is gone


def test_the_address_is_the_resolved_path_s(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    assert bell_address(tmp_path / "dir" / ".." / "store.db") == bell_address(tmp_path / "store.db")
    assert bell_address(tmp_path / "store.db") != bell_address(tmp_path / "other.db")
    assert bell_address(tmp_path / "store.db").startswith(b"\0")


def test_waiting_without_listening_is_a_mistake(tmp_path: Path, bells: list[OutboxBell]) -> None:
    with pytest.raises(RuntimeError, match="listen"):
        make(bells, tmp_path / "store.db").wait(0)
