"""A batch's features, computed column-wise: one row per transaction, in ALL_FEATURES order.

`observe_batch` is the detector's per-batch step: it drops redeliveries, records each event in its
account's state and computes every feature. The usual case is an account whose new events are no
older than what it remembers: its events are appended and their customer windows computed in C
(`_per_record.customer_columns`), and the terminal windows of all such events in C as well
(`_per_record.terminal_columns`: sorted searches in each terminal's int64 arrays as the table
holds them). Any other account (an event out of time order, a duplicate inside the batch,
amounts negative or too large for exact sums) goes event by event through `record_and_compute`,
which defines the features; both ways give the same numbers, bit for bit.

Column-wise is the cheaper way at every batch size, so it is the way for a batch of any size
(`COLUMNWISE_MIN_ROWS`; tests set a higher minimum to run the event-by-event way on the same
input). Measured on the benchmark's records (whole detector batches, the two ways alternating,
CPU µs per record), event by event costs 256-299 against 228-259 for batches of 1 transaction,
148-175 against 117-134 at 2, 126-144 against 85-92 at 4 and 53-58 against 35-37 at 12.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from txguard.fraud import _per_record
from txguard.fraud.features import (
    ALL_FEATURES,
    DAY_MS,
    HOUR_MS,
    TERMINAL_DELAY_DAYS,
    WINDOW_DAYS,
    ScoringInput,
    record_and_compute,
)
from txguard.fraud.state import AccountHistory, DetectorState, StateNotRestored
from txguard.fraud.terminal_table import TerminalTable
from txguard.kafka.serde import (
    HEADER_EVENT_ID,
    SCHEMA_VERSION_HEADER,
    TRANSACTION_SCHEMA_HEADER,
    ReceivedHeaders,
    check_transaction,
)
from txguard.schema.currencies import MINOR_UNITS
from txguard.schema.v1.events_pb2 import TransactionCreated
from txguard.schema.v1.transaction_pb2 import Transaction

if TYPE_CHECKING:
    from confluent_kafka import Message

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_WINDOWS_MS = tuple(n * DAY_MS for n in WINDOW_DAYS)
_TERMINAL_DELAY_MS = TERMINAL_DELAY_DAYS * DAY_MS
_LONGEST_WINDOW_MS = _WINDOWS_MS[-1]
_COLUMN = {name: index for index, name in enumerate(ALL_FEATURES)}
# Minor units per major unit, by currency (an unknown currency counts 100, as in features.py).
_SCALES = {currency: float(10**units) for currency, units in MINOR_UNITS.items()}
# The columns `_per_record.terminal_columns` writes, in the order it writes them.
_TERMINAL_COLUMNS = tuple(
    _COLUMN[f"TERMINAL_ID_{kind}_{n}DAY_WINDOW"] for n in WINDOW_DAYS for kind in ("NB_TX", "RISK")
)

# The columns `_per_record.customer_columns` writes, in the order it writes them.
_CUSTOMER_SPEC_COLUMNS = (
    _COLUMN["TX_AMOUNT"],
    _COLUMN["TX_DURING_WEEKEND"],
    _COLUMN["TX_DURING_NIGHT"],
    *(
        _COLUMN[f"CUSTOMER_ID_{kind}_{n}DAY_WINDOW"]
        for n in WINDOW_DAYS
        for kind in ("NB_TX", "AVG_AMOUNT")
    ),
    _COLUMN["CUSTOMER_ID_NB_TX_1HOUR_WINDOW"],
    _COLUMN["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"],
    _COLUMN["CUSTOMER_ID_AMOUNT_RATIO_30DAY"],
    _COLUMN["CUSTOMER_ID_AMOUNT_ZSCORE_30DAY"],
)

# Column-wise, an account's window sums stay exact in int64 and its z-score's terms in int128
# (`_per_record.customer_columns`) while amounts are below 2**26 and it holds at most 2**11
# events, timed in [0, 2**43).
_MAX_TIME_MS = 1 << 43
_MAX_AMOUNT = 1 << 26
_MAX_EVENTS = 1 << 11
# The smallest batch computed column-wise: every batch (see the module's docstring).
COLUMNWISE_MIN_ROWS = 1


class TransactionRow(NamedTuple):
    """What the detector reads of one TransactionCreated, read from the message once."""

    partition: int
    event_id: str
    transaction_id: str
    account_id: str
    amount_minor: int
    currency: str
    terminal_id: str
    occurred_ms: int
    # When the API accepted it, in Unix seconds: the decision's latency metric.
    accepted_seconds: float
    # The event's occurred_at and accepted_at Timestamps as written (protobuf's wire format):
    # the decision copies them byte for byte.
    occurred_at: bytes
    accepted_at: bytes
    # The record's offset on its partition; -1 for a row that was not consumed.
    offset: int = -1

    @classmethod
    def of(
        cls, partition: int, event: TransactionCreated, *, offset: int = -1, check: bool = True
    ) -> TransactionRow:
        """The row of an event, checked as `decode_transaction_created` checks it (raising
        InvalidEvent) unless `check` is false. The detector's batches go through `decode_rows`,
        which reads each field once; this reads the records it hands back (other header layouts)
        and the rows of `FeatureBatch.of`."""
        tx = event.transaction
        if check:
            check_transaction(
                event_id=event.event_id,
                transaction_id=tx.transaction_id,
                account_id=tx.account_id,
                currency=tx.currency,
                amount_minor=tx.amount_minor,
                has_times=tx.HasField("occurred_at") and tx.HasField("accepted_at"),
            )
        return _row(
            partition,
            event.event_id,
            tx.transaction_id,
            tx.account_id,
            tx.amount_minor,
            tx.currency,
            tx,
            offset,
        )


_CURRENCY_FIELD = TransactionRow._fields.index("currency")
_OFFSET_FIELD = TransactionRow._fields.index("offset")


def _row(
    partition: int | None,
    event_id: str,
    transaction_id: str,
    account_id: str,
    amount_minor: int,
    currency: str,
    tx: Transaction,
    offset: int | None,
) -> TransactionRow:
    """The row, from the fields its reader took out of the event (to check them) and the rest.
    `partition` and `offset` are a consumed record's, never None (typed as confluent-kafka
    reports them)."""
    occurred = tx.occurred_at
    accepted = tx.accepted_at
    # tuple.__new__ skips the named tuple's Python-level constructor (one row per record).
    return tuple.__new__(
        TransactionRow,
        (
            partition,
            event_id,
            transaction_id,
            account_id,
            amount_minor,
            currency,
            tx.terminal_id,
            occurred.seconds * 1000 + occurred.nanos // 1_000_000,
            accepted.seconds + accepted.nanos / 1e9,
            occurred.SerializeToString(),
            accepted.SerializeToString(),
            offset,
        ),
    )


def decode_rows(
    records: Sequence[Message], fallback: Callable[[Message], TransactionRow | None]
) -> list[TransactionRow]:
    """The rows of a batch's records, in their order: `decode_rows_in_python`'s rows, read by
    the C extension `txguard.fraud._per_record`, which decodes the usual records' Protobuf
    itself."""
    return _per_record.decode_rows(
        records,
        fallback,
        TransactionRow,
        HEADER_EVENT_ID,
        TRANSACTION_SCHEMA_HEADER,
        SCHEMA_VERSION_HEADER,
    )


def decode_rows_in_python(
    records: Sequence[Message], fallback: Callable[[Message], TransactionRow | None]
) -> list[TransactionRow]:
    """The rows of a batch's records, in their order (the definition `decode_rows` follows).

    A record as txguard writes it (exactly its three headers, in its order: two comparisons
    instead of a search per header) that decodes and passes `check_transaction`'s condition is
    read here in one loop, as `TransactionRow.of` reads it. Any other record (a watermark, another
    header layout, a record that does not decode or check) goes to `fallback`, which reads it the
    general way and returns its row, or None for a record that has no row (a watermark, a poison
    record).
    """
    rows: list[TransactionRow] = []
    append = rows.append
    parse = TransactionCreated.FromString
    row_of = _row
    for message in records:
        # (Annotated, not cast: cast is a call per record.)
        headers: ReceivedHeaders = message.headers()  # type: ignore[assignment]
        if (
            headers is not None
            and len(headers) == 3
            and headers[1] == TRANSACTION_SCHEMA_HEADER
            and headers[2] == SCHEMA_VERSION_HEADER
            and headers[0][0] == HEADER_EVENT_ID
        ):
            try:
                event = parse(message.value() or b"")
            except DecodeError:
                event = None
            if event is not None:
                tx = event.transaction
                event_id = event.event_id
                transaction_id = tx.transaction_id
                account_id = tx.account_id
                currency = tx.currency
                amount_minor = tx.amount_minor
                # `check_transaction`'s condition for a valid transaction, inline.
                if (
                    event_id
                    and transaction_id
                    and account_id
                    and currency
                    and amount_minor >= 0
                    and tx.HasField("occurred_at")
                    and tx.HasField("accepted_at")
                ):
                    append(
                        row_of(
                            message.partition(),
                            event_id,
                            transaction_id,
                            account_id,
                            amount_minor,
                            currency,
                            tx,
                            message.offset(),
                        )
                    )
                    continue
        row = fallback(message)
        if row is not None:
            append(row)
    return rows


@dataclass(slots=True)
class FeatureBatch:
    """What the scorer sees of a batch: the transactions and their features, one row each."""

    rows: list[TransactionRow]
    values: FloatArray  # shape (rows, len(ALL_FEATURES))
    amount_minor: IntArray
    currencies: list[str]
    # The account's transactions in the velocity window ending at each one, it included.
    in_velocity_window: IntArray

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def of(cls, inputs: Sequence[ScoringInput], partition: int = 0) -> FeatureBatch:
        """A batch of transactions whose features were computed one by one."""
        return cls(
            rows=[TransactionRow.of(partition, item.event, check=False) for item in inputs],
            values=np.array([item.features.values for item in inputs], dtype=np.float64).reshape(
                len(inputs), len(ALL_FEATURES)
            ),
            amount_minor=np.array([item.features.amount_minor for item in inputs], dtype=np.int64),
            currencies=[item.features.currency for item in inputs],
            in_velocity_window=np.array(
                [item.features.transactions_in_velocity_window for item in inputs], dtype=np.int64
            ),
        )


@dataclass(frozen=True, slots=True)
class ObservedBatch:
    """The batch's new events with their features, and how many redeliveries were dropped."""

    features: FeatureBatch
    duplicates: int


class _Account(NamedTuple):
    """One account's events in this batch, in batch order, with their event ids' hashes."""

    partition: int
    account_id: str
    history: AccountHistory
    rows: list[int]
    hashes: list[int]


def observe_batch(
    state: DetectorState,
    table: TerminalTable,
    rows: Sequence[TransactionRow],
    *,
    velocity_window_ms: int,
    columnwise_min_rows: int = COLUMNWISE_MIN_ROWS,
) -> ObservedBatch:
    """Dedup, record and compute the features of a batch of decoded transactions.

    An event whose id its account remembers at that point of the batch, or whose record lies below
    the offset its account's state reflects (`AccountHistory.next_offset`), is a redelivery: it is
    dropped and counted. The rows of the result are the other events, in batch order. A batch of
    fewer than `columnwise_min_rows` rows is computed event by event.
    """
    rows = rows if isinstance(rows, list) else list(rows)
    count = len(rows)
    times = [row.occurred_ms for row in rows]
    amounts = [row.amount_minor for row in rows]
    columnwise = count >= columnwise_min_rows
    longest_ms = max(state.limits.history_ms, _LONGEST_WINDOW_MS, velocity_window_ms)
    # In C: the rows by account (`group_rows`), each account's history marked changed, and the
    # events of each account none of whose records lies below its `next_offset` appended when
    # `_appendable` (`append_if_appendable`).
    appended, others = _per_record.observe_accounts(
        rows,
        state.accounts_and_changes(),
        AccountHistory,
        StateNotRestored,
        _Account,
        times,
        amounts,
        _OFFSET_FIELD,
        columnwise,
        longest_ms,
        _MAX_EVENTS,
        _MAX_AMOUNT,
        _MAX_TIME_MS,
    )
    values = np.empty((count, len(ALL_FEATURES)), dtype=np.float64)
    in_velocity = np.empty(count, dtype=np.int64)
    duplicate = np.zeros(count, dtype=np.bool_)
    for account in others:
        history = account.history
        if history.next_offset > rows[account.rows[0]].offset >= 0:
            account = _drop_redelivered(account, rows, duplicate)
            if not account.rows:
                continue
            if columnwise and _per_record.append_if_appendable(
                history,
                account.rows,
                account.hashes,
                times,
                amounts,
                longest_ms,
                _MAX_EVENTS,
                _MAX_AMOUNT,
                _MAX_TIME_MS,
            ):
                appended.append(account)
                continue
        for index, id_hash in zip(account.rows, account.hashes, strict=True):
            if history.has_seen(id_hash):
                duplicate[index] = True
                continue
            row = rows[index]
            features = record_and_compute(
                history,
                id_hash,
                times[index],
                amounts[index],
                row.currency,
                row.terminal_id,
                table,
                state.limits,
                velocity_window_ms=velocity_window_ms,
            )
            values[index] = features.values
            in_velocity[index] = features.transactions_in_velocity_window
    if appended:
        # Their features, then `AccountHistory.expire` for each.
        _appended_features(
            appended,
            rows,
            table,
            values,
            in_velocity,
            state=state,
            velocity_window_ms=velocity_window_ms,
        )
    duplicates = int(duplicate.sum())
    if duplicates:
        fresh = ~duplicate
        kept = [row for row, drop in zip(rows, duplicate.tolist(), strict=True) if not drop]
        values, in_velocity = values[fresh], in_velocity[fresh]
        amounts = [row.amount_minor for row in kept]
    else:
        kept = rows
    batch = FeatureBatch(
        rows=kept,
        values=values,
        amount_minor=np.array(amounts, dtype=np.int64),
        currencies=[row.currency for row in kept],
        in_velocity_window=in_velocity,
    )
    return ObservedBatch(batch, duplicates)


def _drop_redelivered(
    account: _Account, rows: Sequence[TransactionRow], duplicate: npt.NDArray[np.bool_]
) -> _Account:
    """Mark the account's rows below its state's `next_offset` as duplicates; the account with
    the others: the state reflects those records already (they come again after a restart from
    older committed offsets), even the ones it no longer remembers by their ids."""
    below = account.history.next_offset
    kept_rows: list[int] = []
    kept_hashes: list[int] = []
    for index, id_hash in zip(account.rows, account.hashes, strict=True):
        if 0 <= rows[index].offset < below:
            duplicate[index] = True
        else:
            kept_rows.append(index)
            kept_hashes.append(id_hash)
    return account._replace(rows=kept_rows, hashes=kept_hashes)


def _appendable(
    account: _Account,
    times: list[int],
    amounts: list[int],
    longest_ms: int,
    *,
    max_events: int = _MAX_EVENTS,
    max_amount: int = _MAX_AMOUNT,
    max_time_ms: int = _MAX_TIME_MS,
) -> bool:
    """Whether the account's batch events can all be appended and computed column-wise: none
    is a redelivery, none is older than what the account remembers or than the event before it,
    and the sums stay exact. (Then dedup and expiry cannot interleave with them.)

    The definition of `_per_record.append_if_appendable`, which asks this and appends the
    events (`AccountHistory.append_in_order`) when the answer is yes.
    """
    history = account.history
    previous = history.last_event_time_ms
    if len(history) + len(account.rows) > max_events:
        return False
    for row in account.rows:
        time_ms = times[row]
        if time_ms < previous or not 0 <= amounts[row] < max_amount:
            return False
        previous = time_ms
    first = times[account.rows[0]]
    if first < longest_ms or previous >= max_time_ms:
        return False
    hashes = account.hashes
    if (len(hashes) > 1 and len(set(hashes)) < len(hashes)) or history.has_seen_any(hashes):
        return False
    # A restored history may hold any int64 amount: the sums are exact for [0, max_amount) only.
    if history.amounts_minor and min(history.amounts_minor) < 0:
        return False
    return history.amount_bound_minor < max_amount or history.largest_amount_minor() < max_amount


def _appended_features(
    accounts: list[_Account],
    rows: list[TransactionRow],
    table: TerminalTable,
    values: FloatArray,
    in_velocity: IntArray,
    *,
    state: DetectorState,
    velocity_window_ms: int,
) -> None:
    """Features of the appended accounts' batch events, written into their rows; then each
    account's `AccountHistory.expire`.

    Mirrors `record_and_compute` event by event (in C, `_per_record.customer_columns`): the
    event at position p of its account sees the events at positions [lo, p], where lo is what
    `AccountHistory.record` would have kept (within `history_ms` of it, at most `max_events`),
    and a window of length w starts at the first of them timed after t - w. The accounts'
    amounts are in [0, `_MAX_AMOUNT`) and they hold at most `_MAX_EVENTS` events (`_appendable`),
    so every sum is exact in int64 and every z-score's terms in int128.
    """
    limits = state.limits
    row_out = np.empty(len(rows), dtype=np.int64)
    time_out = np.empty(len(rows), dtype=np.int64)
    appended = _per_record.customer_columns(
        accounts,
        rows,
        _CURRENCY_FIELD,
        _SCALES,
        values,
        in_velocity,
        row_out,
        time_out,
        _CUSTOMER_SPEC_COLUMNS,
        _WINDOWS_MS,
        HOUR_MS,
        velocity_window_ms,
        limits.history_ms,
        limits.max_events,
    )
    row = row_out[:appended]
    _write_terminal_columns(
        table, [rows[i].terminal_id for i in row.tolist()], time_out[:appended], values, row
    )


def terminal_columns(
    table: TerminalTable, terminal_ids: Sequence[str], times_ms: IntArray
) -> FloatArray:
    """The terminal features of transactions on `terminal_ids` at `times_ms`, one row each:
    `terminal_features` of every row, in the order of `_TERMINAL_COLUMNS`."""
    result = np.zeros((len(terminal_ids), len(_TERMINAL_COLUMNS)), dtype=np.float64)
    rows = np.arange(len(terminal_ids), dtype=np.int64)
    _write_terminal_columns(
        table, terminal_ids, times_ms, result, rows, tuple(range(len(_TERMINAL_COLUMNS)))
    )
    return result


def _write_terminal_columns(
    table: TerminalTable,
    terminal_ids: Sequence[str],
    times_ms: IntArray,
    values: FloatArray,
    rows: IntArray,
    columns: tuple[int, ...] = _TERMINAL_COLUMNS,
) -> None:
    """`terminal_features` of each transaction into its row of `values`, in C: sorted searches
    in the terminal's arrays as the table holds them now."""
    _per_record.terminal_columns(
        terminal_ids if isinstance(terminal_ids, list) else list(terminal_ids),
        np.ascontiguousarray(times_ms, dtype=np.int64),
        table.terminals,
        values,
        rows,
        columns,
        _WINDOWS_MS,
        _TERMINAL_DELAY_MS,
    )
