"""`txguard status --once` against a real `txguard serve transactions` process and a dead port.

The service runs as its own process on a free metrics port; transactions (a few invalid) are sent
all through the two scrapes, so the screen must show them as a rate.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import free_tcp_port
from txguard.demo.processes import ServiceProcess, start_service, wait_for_grpc_serving
from txguard.observability.status import StatusTarget, parse_target, run_status
from txguard.schema.luhn import with_check_digit
from txguard.schema.v1 import service_pb2_grpc
from txguard.schema.v1.service_pb2 import CreateTransactionRequest

pytestmark = pytest.mark.integration

INTERVAL_SECONDS = 1.5


@pytest.fixture
def api(txguard_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[ServiceProcess, int]]:
    metrics_port = free_tcp_port()
    env = {**txguard_env, "TXGUARD_METRICS_PORT": str(metrics_port), "PYTHONUNBUFFERED": "1"}
    process = start_service("transactions", env=env, log_dir=tmp_path / "logs")
    try:
        wait_for_grpc_serving(env["TXGUARD_GRPC_ADDR"], process)
        yield process, metrics_port
    finally:
        code = process.terminate(timeout=60)
        assert code == 0, process.log_tail(40)


def send_until(target: str, stop: threading.Event, sent: list[int]) -> None:
    """One request every 10 ms; every fifth one is invalid (amount 0)."""
    run = uuid.uuid4().hex[:10]
    metadata = (("x-client-id", "status-test"),)
    with grpc.insecure_channel(target) as channel:
        create = service_pb2_grpc.TransactionServiceStub(channel).CreateTransaction
        index = 0
        while not stop.wait(0.01):
            request = CreateTransactionRequest(
                idempotency_key=f"{run}-{index}",
                account_id=f"status-{index % 7}",
                amount_minor=0 if index % 5 == 4 else 1_000,
                currency="EUR",
                terminal_id="terminal-1",
                card_number=with_check_digit(f"4{index:014d}"),
            )
            try:
                create(request, metadata=metadata, timeout=10)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            index += 1
    sent.append(index)


def test_status_once_shows_the_live_service_and_the_dead_one(
    api: tuple[ServiceProcess, int], txguard_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _process, metrics_port = api
    dead_port = free_tcp_port()
    targets = [
        parse_target(f"transactions=127.0.0.1:{metrics_port}"),
        StatusTarget("detector", f"http://127.0.0.1:{dead_port}/metrics"),
    ]
    stop = threading.Event()
    sent: list[int] = []
    sender = threading.Thread(
        target=send_until, args=(txguard_env["TXGUARD_GRPC_ADDR"], stop, sent), daemon=True
    )
    sender.start()
    try:
        code = run_status(targets, interval_seconds=INTERVAL_SECONDS, once=True)
    finally:
        stop.set()
        sender.join(timeout=30)
    screen = capsys.readouterr().out
    assert sent and sent[0] > 0, "the sender ran"
    assert code == 0, screen

    def value(pattern: str) -> float:
        found = re.search(pattern, screen, re.MULTILINE)
        assert found is not None, f"{pattern!r} not on the screen:\n{screen}"
        return float(found.group(1).replace(",", ""))

    assert re.search(rf"^transactions  127\.0\.0\.1:{metrics_port}  up  txguard ", screen, re.M)
    accepted_per_second = value(r"^  accepted\s+([\d.]+)/s")
    total = value(r"^  accepted .*\(total ([\d,]+)\)")
    # At most one request per 10 ms was sent, 4 in 5 of them valid.
    assert 0 < accepted_per_second <= 100, screen
    assert 0 < total <= sent[0], screen
    assert value(r"^  rejected\s+([\d.]+)/s   invalid_argument [\d.]+/s$") > 0, screen
    assert value(r"^  API latency  p50 ([\d.]+) ms") > 0, screen
    # The relay runs inside the process: its outbox numbers are in the block.
    assert re.search(r"^  outbox       backlog \d+ events", screen, re.M), screen
    assert re.search(
        rf"^detector  127\.0\.0\.1:{dead_port}  DOWN \(connection refused\); "
        r"start it: txguard serve detector$",
        screen,
        re.M,
    ), screen
    # Shown with `pytest -rP`: what an operator sees.
    print(screen)
