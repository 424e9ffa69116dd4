"""The end-to-end benchmark's view of the store, and the requests it prepares before a run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import new_transaction
from txguard.bench.end_to_end import APPLIED_COUNT_SQL, StoreReader
from txguard.clock import now_us, timestamp_from_us
from txguard.schema.v1.decision_pb2 import FraudDecision, Outcome
from txguard.schema.v1.service_pb2 import CreateTransactionRequest
from txguard.simulate.load_generator import PreparedRequests
from txguard.store.sqlite import SqliteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "store.db")
    yield store
    store.close()


def _decisions(transaction_ids: list[str]) -> list[FraudDecision]:
    return [
        FraudDecision(
            decision_id=str(uuid.uuid4()),
            transaction_id=transaction_id,
            score=0.1,
            outcome=Outcome.OUTCOME_APPROVE,
            decided_at=timestamp_from_us(now_us()),
        )
        for transaction_id in transaction_ids
    ]


def test_applied_count_counts_only_the_runs_own_applied_transactions(
    store: SqliteStore, tmp_path: Path
) -> None:
    earlier = [new_transaction(f"acct-{i}") for i in range(4)]
    store.record_transactions(earlier)
    reader = StoreReader(tmp_path / "store.db")
    after_rowid = reader.last_rowid()
    since_us = now_us()
    run = [new_transaction(f"acct-{i}") for i in range(6)]
    store.record_transactions(run)
    ids = [item.transaction.transaction_id for item in run]
    # An earlier run's transaction applied during this run is not this run's.
    store.apply_decisions(_decisions([earlier[0].transaction.transaction_id]), since_us + 10)
    assert reader.applied_count(since_us, after_rowid) == 0

    store.apply_decisions(_decisions(ids[:4]), since_us + 20)

    assert reader.applied_count(since_us, after_rowid) == 4
    assert reader.applied_count(since_us + 21, after_rowid) == 0
    reader.close()


def test_applied_count_reads_the_index_alone(store: SqliteStore) -> None:
    plan = store.connection.execute(f"EXPLAIN QUERY PLAN {APPLIED_COUNT_SQL}", (0, 0)).fetchall()

    assert any("COVERING INDEX transactions_by_applied" in row[-1] for row in plan), plan


class _Numbered:
    """Requests numbered by their account id, in the order they were made."""

    def __init__(self) -> None:
        self.made = 0

    def next_request(self) -> CreateTransactionRequest:
        self.made += 1
        return CreateTransactionRequest(account_id=f"acct-{self.made}")


def test_prepared_requests_are_made_up_front_and_handed_out_in_order() -> None:
    source = _Numbered()

    prepared = PreparedRequests(source, 3)

    assert source.made == 3
    assert len(prepared) == 3
    handed = [prepared.next_request().account_id for _ in range(5)]
    # Once the prepared ones are gone, the rest are made as they are asked for.
    assert handed == ["acct-1", "acct-2", "acct-3", "acct-4", "acct-5"]
    assert source.made == 5
