"""The terminal-risk table stage: entries merged from transactions and labels, old ones deleted."""

from __future__ import annotations

from confluent_kafka import Message

from txguard.config import Settings
from txguard.fraud.terminal_risk import (
    DAY_MS,
    TerminalTableBuilder,
    _PartitionTable,
)
from txguard.fraud.terminal_table import entry_key, watermark_key
from txguard.schema.v1.labels_pb2 import FraudLabel
from txguard.schema.v1.terminal_risk_pb2 import (
    SourceWatermark,
    TerminalEvent,
    TerminalTableRecord,
    TerminalTransaction,
)

START_MS = 1_530_000_000_000


def builder(**env: str) -> TerminalTableBuilder:
    settings = Settings.from_env(env)
    stage = TerminalTableBuilder(settings)
    stage._source_partitions = {settings.topics.transactions: 1, settings.topics.labels: 1}
    stage._tables[0] = _PartitionTable()
    return stage


def message(event: TerminalEvent) -> Message:
    return Message(topic="events", partition=0, offset=0, key=b"", value=event.SerializeToString())


def transaction(transaction_id: str, time_ms: int) -> Message:
    return message(
        TerminalEvent(
            transaction=TerminalTransaction(
                transaction_id=transaction_id, terminal_id="t", occurred_at_ms=time_ms
            )
        )
    )


def watermarks(stage: TerminalTableBuilder, time_ms: int) -> list[Message]:
    return [
        message(
            TerminalEvent(
                watermark=SourceWatermark(
                    source_topic=topic, source_partition=0, event_time_ms=time_ms
                )
            )
        )
        for topic in (stage.topics.transactions, stage.topics.labels)
    ]


def test_entries_behind_the_retention_are_deleted_once_and_the_rest_kept() -> None:
    stage = builder()
    times = {f"tx-{day}": START_MS + day * DAY_MS for day in range(0, 90, 3)}
    stage.apply([transaction(tid, time_ms) for tid, time_ms in times.items()])
    # A label moves tx-0's entry (same time): one stale heap pair, still one deletion.
    label = FraudLabel(transaction_id="tx-0", terminal_id="t", fraud=True)
    label.occurred_at.FromMilliseconds(START_MS)
    label.known_at.FromMilliseconds(START_MS + DAY_MS)
    stage.apply([message(TerminalEvent(label=label))])
    now = START_MS + 89 * DAY_MS
    output = stage.apply(watermarks(stage, now))
    horizon = now - 60 * DAY_MS  # the default retention
    deleted = [record.key for record in output if record.value is None]
    expected = [entry_key("t", tid) for tid, t in times.items() if t < horizon]
    assert deleted == expected
    assert set(stage._tables[0].entries) == {
        entry_key("t", tid) for tid, t in times.items() if t >= horizon
    }
    last = TerminalTableRecord.FromString(output[-1].value or b"")
    assert output[-1].key == watermark_key(0)
    assert last.watermark.transactions_complete_until_ms == now
    # Nothing more to delete at the same horizon.
    assert not [r for r in stage.apply(watermarks(stage, now + 1)) if r.value is None]


def test_an_unbounded_retention_deletes_nothing() -> None:
    """What a replay needs, whose detector starts at the first transaction once the table is
    complete: far more than 60 days behind the table's watermark."""
    stage = builder(TXGUARD_TERMINAL_TABLE_RETENTION_DAYS="unbounded")
    stage.apply([transaction(f"tx-{day}", START_MS + day * DAY_MS) for day in range(0, 90, 3)])
    output = stage.apply(watermarks(stage, START_MS + 89 * DAY_MS))
    assert not [record for record in output if record.value is None]
    assert len(stage._tables[0].entries) == 30
