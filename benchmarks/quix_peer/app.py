"""txguard's fraud detection written as a Quix Streams application: the benchmark's peer.

Same input (the pre-filled `<namespace>.transactions.v1`, Protobuf `TransactionCreated`), same
features (the handbook's 15 and txguard's 4, event time only), same rules, same model artifact
(a logistic regression: `model.json` with its scaler), same `FraudDecision` output with the same
reasons. What differs is the framework, used the way its documentation shows:

- per-account history in Quix's State API (`sdf.apply(..., stateful=True)`, RocksDB, changelog
  topic on): the account's recent events as three packed int64 arrays under one key, read and
  written with `State.get_bytes` / `State.set_bytes` (the State API without a JSON round trip);
- the terminal-risk table (keyed by terminal, while the stream is keyed by account) read from its
  compacted topic into memory at start, like any lookup table the application reads once: the
  benchmark starts the peer only after the table is complete. A Quix join would need the stream
  re-keyed by terminal through a repartition topic, which loses the per-account state;
- Protobuf decode and encode with Quix's `ProtobufDeserializer(to_dict=False)` and
  `ProtobufSerializer`, the generated txguard modules imported by path (`--schema-path`);
- Quix's documented performance settings: at-least-once processing (the default; exactly-once
  is documented as up to 10% slower), `commit_interval` 5 s (the default; longer intervals
  flush changelogs and state less often), and producer batching like txguard's producer.

Run by the benchmark harness from its own virtualenv (quixstreams 3.x needs confluent-kafka
older than txguard's), stopped with SIGTERM, which Quix answers with a last checkpoint.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import heapq
import json
import math
import os
import sys
import time
from array import array
from pathlib import Path
from typing import Any

_SCHEMA_PATH = Path(__file__).resolve().parents[2] / "src"
if "--schema-path" in sys.argv:
    _SCHEMA_PATH = Path(sys.argv[sys.argv.index("--schema-path") + 1])
# Only the generated Protobuf modules are taken from txguard; their packages import nothing else.
sys.path.insert(0, str(_SCHEMA_PATH))

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition  # noqa: E402
from quixstreams import Application, State  # noqa: E402
from quixstreams.models.serializers.base import Deserializer, SerializationContext  # noqa: E402
from quixstreams.models.serializers.protobuf import ProtobufSerializer  # noqa: E402

from txguard.schema.v1.decision_pb2 import FraudDecision, Outcome  # noqa: E402
from txguard.schema.v1.events_pb2 import TransactionCreated  # noqa: E402
from txguard.schema.v1.terminal_risk_pb2 import TerminalTableRecord  # noqa: E402

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
WINDOWS_MS = (DAY_MS, 7 * DAY_MS, 30 * DAY_MS)
TERMINAL_DELAY_MS = 7 * DAY_MS
HISTORY_MS = 30 * DAY_MS
MAX_EVENTS = 1_000
RULE_BASE, RULE_MAX = 0.6, 0.9
RULES_VERSION = "rules-1"
TOP_FEATURE_REASONS = 3
WATERMARK_SCHEMA = b"txguard.v1.StreamWatermark"
FEATURES = (
    "TX_AMOUNT",
    "TX_DURING_WEEKEND",
    "TX_DURING_NIGHT",
    "CUSTOMER_ID_NB_TX_1DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_7DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_30DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW",
    "TERMINAL_ID_NB_TX_1DAY_WINDOW",
    "TERMINAL_ID_RISK_1DAY_WINDOW",
    "TERMINAL_ID_NB_TX_7DAY_WINDOW",
    "TERMINAL_ID_RISK_7DAY_WINDOW",
    "TERMINAL_ID_NB_TX_30DAY_WINDOW",
    "TERMINAL_ID_RISK_30DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_1HOUR_WINDOW",
    "CUSTOMER_ID_SECONDS_SINCE_PREV_TX",
    "CUSTOMER_ID_AMOUNT_RATIO_30DAY",
    "CUSTOMER_ID_AMOUNT_ZSCORE_30DAY",
)
# Currencies whose minor unit is not a hundredth (ISO 4217); everything else has two decimals.
MINOR_UNITS = {"JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "BHD": 3, "KWD": 3, "OMR": 3, "TND": 3}
_APPROVE, _REVIEW, _DECLINE = (
    Outcome.OUTCOME_APPROVE,
    Outcome.OUTCOME_REVIEW,
    Outcome.OUTCOME_DECLINE,
)


class TransactionDeserializer(Deserializer):
    """Protobuf `TransactionCreated`; the stream's event-time watermarks become None."""

    def __call__(self, value: bytes, ctx: SerializationContext) -> TransactionCreated | None:
        for name, header in ctx.headers or ():
            if name == "txguard-schema" and header == WATERMARK_SCHEMA:
                return None
        event = TransactionCreated()
        event.ParseFromString(value)
        return event


class TerminalTable:
    """The compacted terminal-risk topic, read once into sorted arrays per terminal."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, tuple[int, int]]] = {}
        self._views: dict[str, tuple[list[int], list[int]]] = {}

    def load(self, bootstrap: str, topic: str) -> int:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"quix-peer-table-{os.getpid()}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
            ends = {}
            for number in partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, number), timeout=30
                )
                if high > low:
                    ends[number] = high
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
            records = 0
            while ends:
                for message in consumer.consume(num_messages=10_000, timeout=1.0):
                    partition = message.partition()
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            ends.pop(partition, None)
                        continue
                    self._apply(message.key(), message.value())
                    records += 1
                    if message.offset() + 1 >= ends.get(partition, 0):
                        ends.pop(partition, None)
        finally:
            consumer.close()
        for terminal, entries in self._entries.items():
            ordered = sorted(entries.values())
            self._views[terminal] = ([t for t, _ in ordered], [k for _, k in ordered])
        self._entries.clear()
        return records

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None or key.startswith(b"watermark/"):
            return
        terminal, _, transaction = key.decode().partition("/")
        if value is None:
            self._entries.get(terminal, {}).pop(transaction, None)
            return
        record = TerminalTableRecord.FromString(value)
        if record.WhichOneof("record") == "entry":
            entry = record.entry
            self._entries.setdefault(terminal, {})[transaction] = (
                entry.occurred_at_ms,
                entry.fraud_known_at_ms,
            )

    def features(self, terminal: str, time_ms: int) -> list[float]:
        """For n in 1, 7, 30 days: transactions in (t - 7 d - n, t - 7 d], share known as fraud
        by t."""
        view = self._views.get(terminal)
        if view is None:
            return [0.0] * 6
        times, known = view
        until = time_ms - TERMINAL_DELAY_MS
        end = bisect.bisect_right(times, until)
        values: list[float] = []
        for window in WINDOWS_MS:
            start = bisect.bisect_right(times, until - window)
            count = end - start
            frauds = sum(1 for at in known[start:end] if 0 < at <= time_ms)
            values.append(float(count))
            values.append(frauds / count if count else 0.0)
        return values


class LogisticRegression:
    """The artifact's model.json: sigmoid(intercept + coef . (x - mean) / scale)."""

    def __init__(self, directory: Path) -> None:
        model = json.loads((directory / "model.json").read_text())
        metadata = json.loads((directory / "metadata.json").read_text())
        self.version = f"{metadata['kind']}-{metadata['version']}"
        self.names = tuple(model["feature_names"])
        self.columns = [FEATURES.index(name) for name in self.names]
        self.mean = [float(v) for v in model["scaler"]["mean"]]
        self.scale = [float(v) for v in model["scaler"]["scale"]]
        self.coefficients = [float(v) for v in model["coefficients"]]
        self.intercept = float(model["intercept"])

    def score(self, values: list[float]) -> tuple[float, list[tuple[str, float, float]]]:
        """The score and the features that raised it most: (name, contribution, value)."""
        contributions = [
            (values[column] - mean) / scale * coefficient
            for column, mean, scale, coefficient in zip(
                self.columns, self.mean, self.scale, self.coefficients, strict=True
            )
        ]
        margin = self.intercept + sum(contributions)
        score = 1.0 / (1.0 + math.exp(-margin)) if margin > -700 else 0.0
        top = heapq.nlargest(
            TOP_FEATURE_REASONS, range(len(contributions)), key=contributions.__getitem__
        )
        reasons = [
            (self.names[i], contributions[i], values[self.columns[i]])
            for i in top
            if contributions[i] > 0
        ]
        return score, reasons


def _graded(excess: float) -> float:
    return RULE_BASE + (RULE_MAX - RULE_BASE) * min(1.0, max(0.0, excess))


class Detector:
    """One transaction at a time: state -> features -> rules + model -> decision."""

    def __init__(self, args: argparse.Namespace, table: TerminalTable) -> None:
        self.table = table
        self.model = LogisticRegression(args.model)
        self.amount_threshold = args.amount_threshold_minor
        self.velocity_window_ms = args.velocity_window_seconds * 1000
        self.velocity_max = args.velocity_max_transactions
        self.review = args.review_threshold
        self.decline = args.decline_threshold
        self.processed = 0
        self.duplicates = 0

    def decide(self, event: TransactionCreated, state: State) -> FraudDecision | None:
        self.processed += 1
        tx = event.transaction
        id_hash = int.from_bytes(
            hashlib.blake2b(event.event_id.encode(), digest_size=8).digest(), "little"
        )
        hashes, times, amounts, last = _unpack(state.get_bytes("history"))
        if id_hash in hashes:
            self.duplicates += 1
            return None
        time_ms = int(tx.occurred_at.ToMilliseconds())
        position = bisect.bisect_right(times, time_ms)
        times.insert(position, time_ms)
        hashes.insert(position, id_hash)
        amounts.insert(position, tx.amount_minor)
        last = max(last, time_ms)
        expired = max(bisect.bisect_right(times, last - HISTORY_MS), len(times) - MAX_EVENTS)
        if expired > 0:
            del times[:expired], hashes[:expired], amounts[:expired]
            position -= expired
        state.set_bytes("history", _pack(hashes, times, amounts, last))
        values = self._features(
            tx.amount_minor, tx.currency, tx.terminal_id, times, amounts, position
        )
        return self._decision(event, values, times, position)

    def _features(
        self,
        amount_minor: int,
        currency: str,
        terminal: str,
        times: array[int],
        amounts: array[int],
        position: int,
    ) -> list[float]:
        scale = 10 ** MINOR_UNITS.get(currency, 2)
        time_ms = times[position]
        end = position + 1
        seconds = time_ms // 1000
        weekday = (seconds // 86_400 + 3) % 7
        hour = (seconds % 86_400) // 3600
        values = [amount_minor / scale, float(weekday >= 5), float(hour <= 6)]
        start_30d = end
        for window in WINDOWS_MS:
            start = bisect.bisect_right(times, time_ms - window, 0, end)
            count = end - start
            values.append(float(count))
            values.append(sum(amounts[start:end]) / count / scale)
            start_30d = start
        values.extend(self.table.features(terminal, time_ms) if terminal else [0.0] * 6)
        in_hour = end - bisect.bisect_right(times, time_ms - HOUR_MS, 0, end)
        since = (
            min(time_ms - times[position - 1], WINDOWS_MS[-1])
            if position > start_30d
            else WINDOWS_MS[-1]
        )
        previous = amounts[start_30d:position]
        amount = amounts[position]
        m = len(previous)
        total = sum(previous)
        ratio = amount * m / total if m and total else 1.0
        zscore = 0.0
        if m >= 2:
            spread = m * sum(a * a for a in previous) - total * total
            if spread > 0:
                zscore = (m * amount - total) / math.sqrt(spread)
        values.extend((float(in_hour), since / 1000, ratio, zscore))
        return values

    def _decision(
        self, event: TransactionCreated, values: list[float], times: array[int], position: int
    ) -> FraudDecision:
        tx = event.transaction
        hits: list[tuple[str, str, float]] = []
        if tx.amount_minor >= self.amount_threshold:
            hits.append(
                (
                    "rule.amount_threshold",
                    f"amount {tx.amount_minor} {tx.currency} (minor units) is at or above the "
                    f"threshold {self.amount_threshold}",
                    _graded((tx.amount_minor / self.amount_threshold - 1.0) / 3.0),
                )
            )
        time_ms = times[position]
        in_window = (
            position
            + 1
            - bisect.bisect_right(times, time_ms - self.velocity_window_ms, 0, position + 1)
        )
        if in_window > self.velocity_max:
            hits.append(
                (
                    "rule.velocity",
                    f"{in_window} transactions of the account within "
                    f"{self.velocity_window_ms // 1000} s (limit {self.velocity_max})",
                    _graded((in_window - self.velocity_max) / self.velocity_max),
                )
            )
        model_score, feature_reasons = self.model.score(values)
        score = 1.0 - (1.0 - model_score) * math.prod(1.0 - s for _, _, s in hits)
        total = sum(c for _, c, _ in feature_reasons) + sum(s for _, _, s in hits)
        decision = FraudDecision()
        decision.decision_id = os.urandom(16).hex()
        decision.event_id = event.event_id
        decision.transaction_id = tx.transaction_id
        decision.account_id = tx.account_id
        decision.score = score
        decision.outcome = (
            _DECLINE if score >= self.decline else _REVIEW if score >= self.review else _APPROVE
        )
        for code, description, hit_score in sorted(hits, key=lambda h: h[2], reverse=True):
            decision.reasons.add(code=code, description=description, contribution=hit_score / total)
        for name, contribution, value in feature_reasons:
            decision.reasons.add(
                code=f"feature.{name}",
                description=f"{name} = {value:g}",
                contribution=contribution / total,
            )
        decision.model_version = self.model.version
        decision.rules_version = RULES_VERSION
        now = time.time_ns() // 1000
        decision.decided_at.seconds, rest = divmod(now, 1_000_000)
        decision.decided_at.nanos = rest * 1000
        decision.accepted_at.CopyFrom(tx.accepted_at)
        decision.occurred_at.CopyFrom(tx.occurred_at)
        return decision


def _unpack(raw: bytes | None) -> tuple[array[int], array[int], array[int], int]:
    hashes, times, amounts = array("Q"), array("q"), array("q")
    if not raw:
        return hashes, times, amounts, 0
    header = array("q")
    header.frombytes(raw[:16])
    count, last = header
    size = 8 * count
    hashes.frombytes(raw[16 : 16 + size])
    times.frombytes(raw[16 + size : 16 + 2 * size])
    amounts.frombytes(raw[16 + 2 * size : 16 + 3 * size])
    return hashes, times, amounts, last


def _pack(hashes: array[int], times: array[int], amounts: array[int], last: int) -> bytes:
    return (
        array("q", (len(times), last)).tobytes()
        + hashes.tobytes()
        + times.tobytes()
        + amounts.tobytes()
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True, help="transactions topic")
    parser.add_argument("--table", required=True, help="compacted terminal-risk topic")
    parser.add_argument("--output", required=True, help="decisions topic (must exist)")
    parser.add_argument("--group", required=True, help="consumer group")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True, help="logistic regression artifact")
    parser.add_argument("--schema-path", type=Path, default=_SCHEMA_PATH)
    parser.add_argument("--commit-interval", type=float, default=5.0)
    parser.add_argument("--amount-threshold-minor", type=int, default=500_000)
    parser.add_argument("--velocity-window-seconds", type=int, default=3600)
    parser.add_argument("--velocity-max-transactions", type=int, default=10)
    parser.add_argument("--review-threshold", type=float, default=0.5)
    parser.add_argument("--decline-threshold", type=float, default=0.8)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    table = TerminalTable()
    records = table.load(args.bootstrap, args.table)
    print(
        f"quix peer: terminal table read ({records} records) in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    detector = Detector(args, table)
    producer_batching: dict[str, Any] = {
        "compression.type": "lz4",
        "linger.ms": 5,
        "batch.size": 512 * 1024,
        "batch.num.messages": 10_000,
        "acks": "all",
    }
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval,
        processing_guarantee="at-least-once",
        state_dir=str(args.state_dir),
        producer_extra_config=producer_batching,
        loglevel="WARNING",
    )
    source = app.topic(
        args.input, key_deserializer="bytes", value_deserializer=TransactionDeserializer()
    )
    sink = app.topic(
        args.output, key_serializer="bytes", value_serializer=ProtobufSerializer(FraudDecision)
    )
    sdf = app.dataframe(source)
    sdf = sdf.filter(lambda event: event is not None)
    sdf = sdf.apply(detector.decide, stateful=True)
    sdf = sdf.filter(lambda decision: decision is not None)
    sdf.to_topic(sink)
    app.run()
    print(
        json.dumps(
            {
                "quix_peer_stopped": {
                    "processed": detector.processed,
                    "duplicates": detector.duplicates,
                }
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
