"""The gRPC floor: the end-to-end load generator against the no-op API, a real server process."""

from __future__ import annotations

from pathlib import Path

from txguard.bench.end_to_end import MODES
from txguard.bench.grpc_floor import run_grpc_floor
from txguard.bench.noop_api import fixed_answer


def test_every_mode_is_answered_in_full_and_costs_both_sides_cpu(tmp_path: Path) -> None:
    floor = run_grpc_floor(rates=(200.0,), modes=MODES, seconds=1.0, log_dir=tmp_path)

    assert set(floor["runs"]) == {f"{mode}@200" for mode in MODES}
    for name, run in floor["runs"].items():
        # The load generators match answers to requests by request id: every one came back.
        assert run["errors"] == {}, name
        assert run["accepted"] == run["sent"] >= 150, name
        assert run["api_ms"]["count"] == run["accepted"], name
        assert run["cpu_us_per_transaction"]["server"] > 0, name
        assert run["cpu_us_per_transaction"]["load-generator"] > 0, name


def test_the_fixed_answer_is_the_real_apis_answer_to_a_simulated_request() -> None:
    # Every field the real API fills in is filled in: the answer has the real size.
    transaction = fixed_answer().transaction
    for field in ("transaction_id", "account_id", "currency", "card_token", "card_last4"):
        assert getattr(transaction, field), field
    assert transaction.amount_minor > 0
    assert transaction.accepted_at.ToMicroseconds() > 0
