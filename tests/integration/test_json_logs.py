"""A real `txguard serve transactions` with TXGUARD_LOG_FORMAT=json: every line of its output is
one JSON object, the per-request lines carry their ids, and no card number it was sent appears.

Card numbers go where a careless log line would pick them up: the card field of accepted and
rejected requests, and (Luhn-valid, so masked) inside account ids and idempotency keys, which
the service logs as `extra` fields at DEBUG.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import grpc
import pytest

from txguard.demo.processes import start_service, wait_for_grpc_serving
from txguard.observability.logging import CARD_NUMBER_MASK
from txguard.schema.luhn import with_check_digit
from txguard.schema.v1 import service_pb2_grpc
from txguard.schema.v1.service_pb2 import CreateTransactionRequest

pytestmark = pytest.mark.integration

CARDS = [with_check_digit(f"5{n:014d}") for n in range(1, 13)]
FIXED_FIELDS = {"time", "level", "service", "logger", "message"}


def test_json_log_lines_carry_ids_and_no_card_number(
    txguard_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **txguard_env,
        "TXGUARD_LOG_FORMAT": "json",
        "TXGUARD_LOG_LEVEL": "DEBUG",
        "PYTHONUNBUFFERED": "1",
    }
    service = start_service("transactions", env=env, log_dir=tmp_path / "logs")
    run = uuid.uuid4().hex[:10]
    try:
        wait_for_grpc_serving(env["TXGUARD_GRPC_ADDR"], service)
        with grpc.insecure_channel(env["TXGUARD_GRPC_ADDR"]) as channel:
            create = service_pb2_grpc.TransactionServiceStub(channel).CreateTransaction
            metadata = (("x-client-id", "json-log-test"),)
            for index, card in enumerate(CARDS):
                request = CreateTransactionRequest(
                    idempotency_key=f"{run}-{index}-{card}",
                    account_id=f"acct {card}" if index % 2 else f"acct-{index}",
                    # Every third one is rejected: amount 0.
                    amount_minor=0 if index % 3 == 2 else 1_000 + index,
                    currency="EUR",
                    terminal_id="terminal-1",
                    card_number=card,
                )
                try:
                    create(request, metadata=metadata, timeout=10)
                    create(request, metadata=metadata, timeout=10)  # an idempotent retry
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        code = service.terminate(timeout=60)
    output = service.log_path.read_text()
    assert code == 0, output[-3000:]

    entries = []
    for number, line in enumerate(output.splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"line {number} is not JSON: {line!r}")
        assert isinstance(entry, dict) and FIXED_FIELDS <= entry.keys(), line
        assert entry["service"] == "transactions", line
        entries.append(entry)
    for card in CARDS:
        assert card not in output

    by_message = [entry for entry in entries if entry["logger"] == "txguard.transactions.service"]
    accepted = [entry for entry in by_message if entry["message"].startswith("accepted ")]
    replayed = [entry for entry in by_message if entry["message"].startswith("replayed ")]
    rejected = [entry for entry in by_message if entry["message"].startswith("rejected ")]
    assert len(accepted) == len(replayed) == 8 and len(rejected) == 4, by_message
    for entry in accepted:
        assert len(entry["transaction_id"]) == 32 and len(entry["event_id"]) == 32, entry
        assert entry["transaction_id"] in entry["message"]
        assert entry["client_id"] == "json-log-test"
    assert {entry["transaction_id"] for entry in replayed} == {
        entry["transaction_id"] for entry in accepted
    }
    # Odd-numbered requests had a card number in the account id: masked in the extra field.
    masked = [entry for entry in accepted + rejected if entry["account_id"].startswith("acct ")]
    assert masked and all(entry["account_id"] == f"acct {CARD_NUMBER_MASK}" for entry in masked)
    assert any(entry["logger"] == "txguard.services" for entry in entries)
