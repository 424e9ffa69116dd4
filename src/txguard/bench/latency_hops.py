"""Where the end-to-end latency goes: each transaction's path split at its two Kafka records.

A transaction is accepted (the API's time, in the store), relayed (the outbox relay produced its
transaction record: that record's CreateTime), decided (the detector's time, in the decision),
its decision produced (the decision record's CreateTime) and applied (the applier's time, in the
store). Every process runs on the benchmark's machine, so all of them read one clock. Kafka's
record times are whole milliseconds: a hop that begins or ends at one is exact to 1 ms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
from google.protobuf.message import DecodeError

from txguard.bench.kafka_io import Offsets, read_from
from txguard.bench.stats import percentiles
from txguard.schema.v1.events_pb2 import TransactionCreated

# Keys of the measured hops, in the order a transaction passes them, with the report's labels.
HOPS: Final = (
    ("accepted_to_relayed_ms", "accepted -> relayed"),
    ("relayed_to_decided_ms", "relayed -> decided"),
    ("decided_to_decision_produced_ms", "decided -> decision produced"),
    ("decision_produced_to_applied_ms", "decision produced -> applied"),
)

# A row of the store: transaction id, accepted, decided and applied (microseconds).
StoreRow = tuple[str, int, int, int]


def relayed_times(bootstrap: str, topic: str, baseline: Offsets) -> dict[str, int]:
    """Per transaction, the time (ms) its first transaction record since `baseline` was
    produced; records that are not a TransactionCreated are skipped."""
    times: dict[str, int] = {}
    for record in read_from(bootstrap, topic, baseline):
        try:
            event = TransactionCreated.FromString(record.value or b"")
        except DecodeError:
            continue
        transaction_id = event.transaction.transaction_id
        if transaction_id:
            times.setdefault(transaction_id, record.timestamp_ms)
    return times


def hop_latencies(
    rows: Sequence[StoreRow],
    relayed_ms: Mapping[str, int],
    decision_produced_ms: Mapping[str, int],
) -> dict[str, Any]:
    """Percentiles (ms) of each hop over the rows whose two records were both found.

    `transactions` is how many rows that is; the hops of one transaction add up to its
    accepted-to-applied latency.
    """
    kept = [
        (accepted, relayed_ms[tid] * 1000, decided, decision_produced_ms[tid] * 1000, applied)
        for tid, accepted, decided, applied in rows
        if tid in relayed_ms and tid in decision_produced_ms
    ]
    summary: dict[str, Any] = {"transactions": len(kept)}
    if not kept:
        return summary
    times = np.array(kept, dtype=np.int64)
    steps = np.diff(times, axis=1) / 1000
    for index, (key, _label) in enumerate(HOPS):
        summary[key] = percentiles(steps[:, index])
    return summary
