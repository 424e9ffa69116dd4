"""`txguard demo` end to end, and the card-number scan of everything it leaves behind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import read_topic
from txguard.config import (
    DECISIONS_TOPIC,
    DLQ_TOPIC,
    TRANSACTIONS_TOPIC,
    TopicNames,
)
from txguard.schema.luhn import luhn_valid

pytestmark = pytest.mark.integration

# A run of 12-19 digits that is a whole token: not part of a longer run of letters or digits
# (hex identifiers contain digit runs, but never as a standalone number).
CARD_LIKE = re.compile(rb"(?<![0-9A-Za-z])[0-9]{12,19}(?![0-9A-Za-z])")


def card_numbers_in(data: bytes) -> list[bytes]:
    return [m.group(0) for m in CARD_LIKE.finditer(data) if luhn_valid(m.group(0).decode())]


def test_card_number_scan_detects_a_card_number() -> None:
    assert card_numbers_in(b'{"pan": "4111111111111111"}') == [b"4111111111111111"]
    assert card_numbers_in(b"id=4111111111111112 uuid=a4111111111111111b") == []


def test_demo_decides_every_transaction_and_leaks_no_card_number(
    txguard_env: dict[str, str], kafka_broker, tmp_path: Path
) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "txguard", "demo", "--duration", "8", "--rate", "80"],
        env=txguard_env,
        capture_output=True,
        timeout=600,
        check=False,
    )
    output = completed.stdout.decode() + completed.stderr.decode()
    assert completed.returncode == 0, output
    assert re.search(r"missing a decision\s+0\n", output), output
    accepted = int(re.search(r"transactions accepted\s+(\d+)", output).group(1))  # type: ignore[union-attr]
    assert accepted > 300, output

    home = Path(txguard_env["TXGUARD_HOME"])
    scanned: dict[str, bytes] = {"demo output": output.encode()}
    store = Path(txguard_env["TXGUARD_STORE_PATH"])
    for path in [store, *store.parent.glob(store.name + "-*")]:
        scanned[str(path)] = path.read_bytes()
    for log in home.rglob("*.log"):
        scanned[str(log)] = log.read_bytes()
    state_topic = TopicNames().detector_state(txguard_env["TXGUARD_DETECTOR_GROUP"])
    for topic in (TRANSACTIONS_TOPIC, DECISIONS_TOPIC, DLQ_TOPIC, state_topic):
        for record in read_topic(kafka_broker.bootstrap, topic):
            blob = (record.key or b"") + b"\x00" + (record.value or b"")
            for name, value in record.headers:
                blob += b"\x00" + name.encode() + b"\x00" + (value or b"")
            scanned[f"{topic}/{record.partition}/{record.offset}"] = blob
    assert any(name.endswith(".log") for name in scanned), "the services wrote logs"
    leaks = {name: found for name, data in scanned.items() if (found := card_numbers_in(data))}
    assert leaks == {}
