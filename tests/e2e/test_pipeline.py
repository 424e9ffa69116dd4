"""End-to-end acceptance: gRPC → store → outbox → Kafka → detector → applier, real processes."""

from __future__ import annotations

import ast
import asyncio
import re
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tests.e2e.harness import (
    Pipeline,
    RepeatedKill,
    make_customers,
    make_requests,
    open_store_readonly,
    read_topic,
    send_with_retries,
    wait_for_decisions,
    wait_for_log_line,
)
from tests.support import committed_offsets
from txguard.config import DECISIONS_TOPIC, TRANSACTIONS_TOPIC, Settings
from txguard.schema.v1.decision_pb2 import FraudDecision
from txguard.schema.v1.events_pb2 import TransactionCreated

pytestmark = pytest.mark.integration

ALL_SERVICES = ("transactions", "detector", "applier")


@pytest.fixture
def pipeline(txguard_env: dict[str, str], tmp_path: Path):
    running = Pipeline(txguard_env, tmp_path / "logs")
    yield running
    codes = running.stop_all()
    assert all(code == 0 for code in codes.values()), (codes, running.logs()[-5000:])


def store_path(pipeline: Pipeline) -> Path:
    return Path(pipeline.env["TXGUARD_STORE_PATH"])


def transactions_on_kafka(bootstrap: str, accounts: set[str]) -> list[TransactionCreated]:
    events = []
    for record in read_topic(bootstrap, TRANSACTIONS_TOPIC):
        if record.key is not None and record.key.decode(errors="replace") in accounts:
            events.append(TransactionCreated.FromString(record.value or b""))
    return events


def decisions_on_kafka(bootstrap: str, accounts: set[str]) -> list[FraudDecision]:
    decisions = []
    for record in read_topic(bootstrap, DECISIONS_TOPIC):
        if record.key is not None and record.key.decode(errors="replace") in accounts:
            decisions.append(FraudDecision.FromString(record.value or b""))
    return decisions


def assert_exactly_one_applied_decision(path: Path, transaction_ids: set[str]) -> None:
    with open_store_readonly(path) as db:
        rows = db.execute("SELECT transaction_id, decision_id, status FROM transactions").fetchall()
    stored = {row[0]: row for row in rows}
    assert set(stored) == transaction_ids, "store holds exactly the acknowledged transactions"
    assert all(row[1] for row in stored.values()), "every transaction has its applied decision"


def assert_per_account_order(
    events: list[TransactionCreated], decisions: list[FraudDecision]
) -> None:
    """Decisions of each account come in the order its transactions were published."""
    published: dict[str, list[str]] = defaultdict(list)
    for event in events:
        ids = published[event.transaction.account_id]
        if event.transaction.transaction_id not in ids:
            ids.append(event.transaction.transaction_id)
    decided: dict[str, list[str]] = defaultdict(list)
    for decision in decisions:
        ids = decided[decision.account_id]
        if decision.transaction_id not in ids:
            ids.append(decision.transaction_id)
    assert decided == published


def test_idempotent_replays_give_one_transaction_and_one_decision_each(
    pipeline: Pipeline, kafka_broker
) -> None:
    pipeline.start(*ALL_SERVICES)
    customers = make_customers(50, seed=1)
    requests = make_requests(customers, 1000, seed=2)
    # Every request three times, and the first one ten times at once.
    copies = [requests[0]] * 10 + requests * 3
    result = asyncio.run(send_with_retries(pipeline.grpc_target, copies, concurrency=64))
    assert result.final_errors == []
    assert len(result.acknowledged) == 1000
    ids = set(result.acknowledged.values())
    assert len(ids) == 1000
    assert wait_for_decisions(store_path(pipeline), ids) == set()
    assert_exactly_one_applied_decision(store_path(pipeline), ids)
    accounts = {c.account_id for c in customers}
    events = transactions_on_kafka(kafka_broker.bootstrap, accounts)
    assert {e.transaction.transaction_id for e in events} == ids


def test_transaction_service_sigkill_loses_nothing(pipeline: Pipeline, kafka_broker) -> None:
    pipeline.start(*ALL_SERVICES)
    customers = make_customers(100, seed=3)
    requests = make_requests(customers, 5000, seed=4)
    with RepeatedKill(
        pipeline, "transactions", times=5, wait_before_kill=lambda done: done.wait(1.0)
    ) as killer:
        result = asyncio.run(
            send_with_retries(pipeline.grpc_target, requests, concurrency=32, rate_per_second=400)
        )
    assert killer.kills == 5, "the service was killed five times while the client was sending"
    assert result.retries > 0, "kills interrupted requests in flight"
    assert result.final_errors == []
    ids = set(result.acknowledged.values())
    assert len(ids) == 5000
    assert wait_for_decisions(store_path(pipeline), ids) == set()
    assert_exactly_one_applied_decision(store_path(pipeline), ids)
    with open_store_readonly(store_path(pipeline)) as db:
        unpublished = db.execute(
            "SELECT COUNT(*) FROM outbox WHERE published_at_us IS NULL"
        ).fetchone()[0]
    assert unpublished == 0
    accounts = {c.account_id for c in customers}
    events = transactions_on_kafka(kafka_broker.bootstrap, accounts)
    assert {e.transaction.transaction_id for e in events} == ids, "every stored row has its event"
    assert_per_account_order(events, decisions_on_kafka(kafka_broker.bootstrap, accounts))


def test_broker_outage_api_keeps_accepting_and_backlog_drains(
    pipeline: Pipeline, kafka_broker
) -> None:
    pipeline.start(*ALL_SERVICES)
    customers = make_customers(40, seed=5)
    before = make_requests(customers, 300, seed=6)
    during = make_requests(customers, 1500, seed=7)
    after = make_requests(customers, 300, seed=8)
    target = pipeline.grpc_target
    first = asyncio.run(send_with_retries(target, before, rate_per_second=200))
    kafka_broker.stop()
    try:
        outage_started = time.monotonic()
        # The API answers from the store alone: no retries needed while Kafka is away.
        second = asyncio.run(send_with_retries(target, during, rate_per_second=50))
        remaining = 30 - (time.monotonic() - outage_started)
        if remaining > 0:
            time.sleep(remaining)
        with open_store_readonly(store_path(pipeline)) as db:
            backlog = db.execute(
                "SELECT COUNT(*) FROM outbox WHERE published_at_us IS NULL"
            ).fetchone()[0]
        assert backlog >= len(during), "what was accepted during the outage waits in the outbox"
    finally:
        kafka_broker.start()
    third = asyncio.run(send_with_retries(target, after, rate_per_second=200))
    assert second.retries == 0 and second.final_errors == []
    acknowledged = first.acknowledged | second.acknowledged | third.acknowledged
    ids = set(acknowledged.values())
    assert len(ids) == 2100
    assert wait_for_decisions(store_path(pipeline), ids, timeout=240) == set()
    assert_exactly_one_applied_decision(store_path(pipeline), ids)
    accounts = {c.account_id for c in customers}
    events = transactions_on_kafka(kafka_broker.bootstrap, accounts)
    assert {e.transaction.transaction_id for e in events} == ids
    assert_per_account_order(events, decisions_on_kafka(kafka_broker.bootstrap, accounts))


def test_services_stop_cleanly_while_the_broker_is_down(pipeline: Pipeline, kafka_broker) -> None:
    """SIGTERM with the broker away for longer than the consumers' session timeout: each service
    exits 0 before the harness's SIGKILL (60 s), although its consumer cannot leave the group."""
    pipeline.start(*ALL_SERVICES)
    customers = make_customers(10, seed=11)
    requests = make_requests(customers, 100, seed=12)
    result = asyncio.run(send_with_retries(pipeline.grpc_target, requests, rate_per_second=200))
    ids = set(result.acknowledged.values())
    assert wait_for_decisions(store_path(pipeline), ids, timeout=120) == set()
    applier = pipeline.processes["applier"]
    log_size = applier.log_path.stat().st_size
    kafka_broker.stop()
    try:
        wait_for_log_line(applier, "Consumer group session timed out", log_size)
        codes = {name: pipeline.stop(name) for name in reversed(ALL_SERVICES)}
    finally:
        kafka_broker.start()
    assert codes == dict.fromkeys(ALL_SERVICES, 0), pipeline.logs()[-5000:]
    assert_exactly_one_applied_decision(store_path(pipeline), ids)


def decided_count(path: Path) -> int:
    with open_store_readonly(path) as db:
        count: int = db.execute(
            "SELECT COUNT(*) FROM transactions WHERE decision_id IS NOT NULL"
        ).fetchone()[0]
    return count


def test_detector_sigkill_loses_nothing_and_applies_each_decision_once(
    pipeline: Pipeline, kafka_broker
) -> None:
    pipeline.start(*ALL_SERVICES)
    customers = make_customers(100, seed=9)
    requests = make_requests(customers, 4000, seed=10)
    settings = Settings.from_env(pipeline.env)
    waits = 0

    def checkpointed() -> bool:
        return bool(
            committed_offsets(
                kafka_broker.bootstrap,
                settings.detector_group,
                TRANSACTIONS_TOPIC,
                settings.topic_partitions,
            )
        )

    def after_progress(done: threading.Event) -> None:
        """Kill each detector in the middle of its work: once it has decided 150 more (or all
        that is left). The first one also waits for its first checkpoint, so that its successors
        have state to restore; the restarted ones start with a backlog."""
        nonlocal waits
        first = waits == 0
        waits += 1
        target = min(decided_count(store_path(pipeline)) + 150, len(requests))
        deadline = time.monotonic() + 60
        while decided_count(store_path(pipeline)) < target or (first and not checkpointed()):
            if time.monotonic() > deadline or done.wait(0.02):
                return

    with RepeatedKill(pipeline, "detector", times=5, wait_before_kill=after_progress) as killer:
        result = asyncio.run(send_with_retries(pipeline.grpc_target, requests, rate_per_second=200))
        # However fast the detector catches up, all five kills land before the count.
        killer.join(timeout=5 * 90)
        assert wait_for_decisions(store_path(pipeline), result.acknowledged.values(), 240) == set()
    assert killer.kills == 5
    ids = set(result.acknowledged.values())
    assert len(ids) == 4000
    assert_exactly_one_applied_decision(store_path(pipeline), ids)
    accounts = {c.account_id for c in customers}
    decisions = decisions_on_kafka(kafka_broker.bootstrap, accounts)
    per_transaction = Counter(d.transaction_id for d in decisions)
    assert set(per_transaction) == ids
    extra_decisions = sum(per_transaction.values()) - len(ids)
    # Stop the services cleanly so that they report what they counted.
    assert pipeline.stop("applier") == 0
    assert pipeline.stop("detector") == 0
    applier_stats = final_stats(pipeline.log_dir / "applier.log", "decision applier stopped")
    assert applier_stats["duplicates"] == extra_decisions
    detector_log = (pipeline.log_dir / "detector.log").read_text()
    restored = [int(n) for n in re.findall(r"restored (\d+) account states", detector_log)]
    assert max(restored) > 0, "a restarted detector restored the state its predecessor wrote"
    events = transactions_on_kafka(kafka_broker.bootstrap, accounts)
    assert_per_account_order(events, decisions)


def final_stats(log_path: Path, marker: str) -> dict[str, int]:
    """The counters a service logs when it stops cleanly."""
    text = log_path.read_text()
    found = re.findall(re.escape(marker) + r": (\{.*\})", text)
    assert found, text[-3000:]
    stats: dict[str, int] = ast.literal_eval(found[-1])
    return stats
