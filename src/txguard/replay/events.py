"""A dataset in the handbook's column layout as the events the pipeline would have seen.

Rows become TransactionCreated events (account = customer, terminal = terminal, event time =
TX_DATETIME); each fraud (TX_FRAUD = 1) becomes a FraudLabel known `label_delay` after its
transaction. Events are cut into slices of event time; after each slice every partition of the
transactions and labels topics gets a StreamWatermark, which is what lets the terminal-risk
aggregator and the detectors agree on what is known when, at any replay speed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from txguard.clock import set_timestamp_us
from txguard.kafka.consumer_loop import OutgoingRecord
from txguard.kafka.serde import (
    encode_fraud_label,
    encode_stream_watermark,
    encode_transaction_created,
)
from txguard.schema.v1.events_pb2 import TransactionCreated
from txguard.schema.v1.labels_pb2 import FraudLabel
from txguard.schema.v1.watermark_pb2 import StreamWatermark

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
REPLAY_SOURCE = "replay"


@dataclass(frozen=True)
class ReplayTopics:
    transactions: str
    labels: str
    transactions_partitions: int
    labels_partitions: int


def account_id(customer_id: object) -> str:
    return f"customer-{customer_id}"


def terminal_id(terminal: object) -> str:
    return f"terminal-{terminal}"


def event_id(transaction_id: str) -> str:
    return f"replay-{transaction_id}"


def replay_records(
    dataset: pd.DataFrame,
    topics: ReplayTopics,
    *,
    label_delay_us: int,
    currency: str = "EUR",
    slice_us: int = HOUR_US,
) -> Iterator[list[OutgoingRecord]]:
    """Slices of records in event-time order, each ending with the slice's watermarks."""
    times_us = _times_us(dataset["TX_DATETIME"])
    ids = dataset["TRANSACTION_ID"].astype(str).to_numpy()
    customers = dataset["CUSTOMER_ID"].to_numpy()
    terminals = dataset["TERMINAL_ID"].to_numpy()
    amounts = np.rint(dataset["TX_AMOUNT"].to_numpy(dtype=np.float64) * 100).astype(np.int64)
    frauds = (
        dataset["TX_FRAUD"].to_numpy() == 1
        if "TX_FRAUD" in dataset.columns
        else np.zeros(len(dataset), dtype=bool)
    )
    fraud_rows = np.flatnonzero(frauds)
    label_times = times_us[fraud_rows] + label_delay_us
    label_order = np.argsort(label_times, kind="stable")
    fraud_rows, label_times = fraud_rows[label_order], label_times[label_order]
    if len(times_us) == 0:
        return
    start = int(times_us.min()) // slice_us * slice_us
    end = max(int(times_us.max()), int(label_times.max()) if len(label_times) else 0)
    tx_cursor = label_cursor = 0
    for slice_start in range(start, end + 1, slice_us):
        slice_end = slice_start + slice_us
        batch: list[OutgoingRecord] = []
        label_stop = int(np.searchsorted(label_times, slice_end, side="left"))
        for index in range(label_cursor, label_stop):
            row = int(fraud_rows[index])
            batch.append(
                label_record(
                    topics.labels,
                    ids[row],
                    customers[row],
                    terminals[row],
                    int(times_us[row]),
                    int(label_times[index]),
                    source=REPLAY_SOURCE,
                )
            )
        label_cursor = label_stop
        tx_stop = int(np.searchsorted(times_us, slice_end, side="left"))
        for row in range(tx_cursor, tx_stop):
            batch.append(
                _transaction_record(
                    topics.transactions,
                    ids[row],
                    customers[row],
                    terminals[row],
                    int(amounts[row]),
                    currency,
                    int(times_us[row]),
                )
            )
        tx_cursor = tx_stop
        batch.extend(
            watermark_records(
                (
                    (topics.transactions, topics.transactions_partitions),
                    (topics.labels, topics.labels_partitions),
                ),
                slice_end - 1,
                source=REPLAY_SOURCE,
            )
        )
        yield batch


def watermark_records(
    targets: Sequence[tuple[str, int]], complete_until_us: int, *, source: str
) -> list[OutgoingRecord]:
    """One StreamWatermark for every partition of each (topic, partition count) target."""
    mark = StreamWatermark(source=source)
    set_timestamp_us(mark.complete_until, complete_until_us)
    encoded = encode_stream_watermark(mark)
    return [
        OutgoingRecord(topic, encoded.key, encoded.value, encoded.headers, partition=partition)
        for topic, count in targets
        for partition in range(count)
    ]


def _times_us(column: pd.Series) -> np.ndarray:
    values = pd.to_datetime(column)
    if values.dt.tz is not None:
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return values.to_numpy(dtype="datetime64[us]").astype(np.int64)


def _transaction_record(
    topic: str,
    transaction_id: str,
    customer: object,
    terminal: object,
    amount_minor: int,
    currency: str,
    time_us: int,
) -> OutgoingRecord:
    event = TransactionCreated(event_id=event_id(transaction_id))
    tx = event.transaction
    tx.transaction_id = transaction_id
    tx.client_id = REPLAY_SOURCE
    tx.idempotency_key = transaction_id
    tx.account_id = account_id(customer)
    tx.terminal_id = terminal_id(terminal)
    tx.amount_minor = amount_minor
    tx.currency = currency
    set_timestamp_us(tx.occurred_at, time_us)
    set_timestamp_us(tx.accepted_at, time_us)
    encoded = encode_transaction_created(event)
    return OutgoingRecord(topic, encoded.key, encoded.value, encoded.headers)


def label_record(
    topic: str,
    transaction_id: str,
    customer: object,
    terminal: object,
    occurred_us: int,
    known_us: int,
    *,
    source: str,
) -> OutgoingRecord:
    """The fraud label of one transaction, known at `known_us`."""
    label = FraudLabel(
        label_id=f"label-{transaction_id}",
        transaction_id=transaction_id,
        account_id=account_id(customer),
        terminal_id=terminal_id(terminal),
        fraud=True,
        source=source,
    )
    set_timestamp_us(label.occurred_at, occurred_us)
    set_timestamp_us(label.known_at, known_us)
    encoded = encode_fraud_label(label)
    return OutgoingRecord(topic, encoded.key, encoded.value, encoded.headers)
