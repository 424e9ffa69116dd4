"""The detector's batch step gives every transaction the features the one-by-one definition gives.

`observe_batch` appends an in-order account's events and computes their windows column-wise; the
reference here records the same events one at a time and calls `transaction_features`. They must
agree bit for bit, whatever the order, duplicates, amounts, limits and batch boundaries.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from txguard.fraud.feature_batch import TransactionRow, observe_batch, terminal_columns
from txguard.fraud.features import ALL_FEATURES, DAY_MS, record_and_compute, terminal_features
from txguard.fraud.state import (
    AccountHistory,
    DetectorState,
    StateLimits,
    StateNotRestored,
    event_id_hash,
)
from txguard.fraud.terminal_table import TerminalTable, _TerminalEntries

START_MS = 1_530_000_000_000  # mid-2018, like the handbook's data
ACCOUNTS = ("acct-a", "acct-b", "acct-c")
TERMINALS = ("term-1", "term-2", "", "term-unknown")


def row(
    index: int,
    *,
    partition: int,
    account: str,
    time_ms: int,
    amount: int,
    terminal: str,
    event_id: str | None = None,
    currency: str = "EUR",
    offset: int = -1,
) -> TransactionRow:
    seconds, millis = divmod(time_ms, 1000)
    stamp = Timestamp(seconds=seconds, nanos=millis * 1_000_000).SerializeToString()
    return TransactionRow(
        partition=partition,
        event_id=event_id or f"event-{index}",
        transaction_id=f"tx-{index}",
        account_id=account,
        amount_minor=amount,
        currency=currency,
        terminal_id=terminal,
        occurred_ms=time_ms,
        accepted_seconds=time_ms / 1000,
        occurred_at=stamp,
        accepted_at=stamp,
        offset=offset,
    )


def table_with_frauds() -> TerminalTable:
    """Two terminals with a month of history before START_MS, some frauds known late."""
    table = TerminalTable()
    rng = np.random.default_rng(7)
    for terminal in TERMINALS[:2]:
        entries = table._terminals[terminal] = _TerminalEntries()
        for index in range(120):
            occurred = START_MS - int(rng.integers(0, 40 * DAY_MS))
            fraud = rng.random() < 0.2
            known = occurred + int(rng.integers(0, 20 * DAY_MS)) if fraud else 0
            entries.put(f"{terminal}-{index}", occurred, known)
    return table


def one_by_one(
    rows: Sequence[TransactionRow], table: TerminalTable, limits: StateLimits, velocity_ms: int
) -> tuple[list[tuple[float, ...]], list[int], int, DetectorState]:
    """The definition: each event deduplicated, recorded, then its features computed."""
    state = DetectorState(limits)
    for partition in {r.partition for r in rows}:
        state.assign(partition, [])
    values: list[tuple[float, ...]] = []
    in_velocity: list[int] = []
    duplicates = 0
    for r in rows:
        accounts, _changed = state.accounts_and_changes()[r.partition]
        history = accounts.get(r.account_id)
        if history is None:
            history = accounts[r.account_id] = AccountHistory(r.account_id)
        id_hash = event_id_hash(r.event_id)
        if history.has_seen(id_hash):
            duplicates += 1
            continue
        features = record_and_compute(
            history,
            id_hash,
            r.occurred_ms,
            r.amount_minor,
            r.currency,
            r.terminal_id,
            table,
            limits,
            velocity_window_ms=velocity_ms,
        )
        values.append(features.values)
        in_velocity.append(features.transactions_in_velocity_window)
    return values, in_velocity, duplicates, state


def in_batches(
    rows: Sequence[TransactionRow],
    sizes: Sequence[int],
    table: TerminalTable,
    limits: StateLimits,
    velocity_ms: int,
) -> tuple[np.ndarray, list[int], int, DetectorState]:
    state = DetectorState(limits)
    for partition in {r.partition for r in rows}:
        state.assign(partition, [])
    values: list[np.ndarray] = []
    in_velocity: list[int] = []
    duplicates = 0
    start = 0
    for size in [*sizes, len(rows)]:
        chunk = rows[start : start + size]
        start += len(chunk)
        if not chunk:
            continue
        observed = observe_batch(
            state, table, chunk, velocity_window_ms=velocity_ms, columnwise_min_rows=1
        )
        values.append(observed.features.values)
        in_velocity.extend(observed.features.in_velocity_window.tolist())
        duplicates += observed.duplicates
    matrix = np.concatenate(values) if values else np.empty((0, len(ALL_FEATURES)))
    return matrix, in_velocity, duplicates, state


events = st.lists(
    st.tuples(
        st.integers(0, 1),  # partition
        st.sampled_from(ACCOUNTS),
        # Mostly moving forward in time, now and then back, sometimes the same instant.
        st.one_of(
            st.integers(0, 3 * 3_600_000),
            st.integers(-2 * DAY_MS, 0),
            st.just(0),
            st.integers(5 * DAY_MS, 40 * DAY_MS),
        ),
        # Ordinary amounts, zero, and amounts too large for exact int64 sums of squares.
        st.one_of(st.integers(0, 500_000), st.just(0), st.integers(2**26, 2**40)),
        st.sampled_from(TERMINALS),
        st.booleans(),  # resend an earlier event (a redelivery)
    ),
    min_size=1,
    max_size=60,
)


def build_rows(spec: list[tuple[int, str, int, int, str, bool]]) -> list[TransactionRow]:
    rows: list[TransactionRow] = []
    clock = {account: START_MS for account in ACCOUNTS}
    for index, (partition, account, step, amount, terminal, resend) in enumerate(spec):
        previous = [r for r in rows if r.account_id == account and r.partition == partition]
        if resend and previous:
            rows.append(previous[index % len(previous)])
            continue
        clock[account] += step
        rows.append(
            row(
                index,
                partition=partition,
                account=account,
                time_ms=clock[account],
                amount=amount,
                terminal=terminal,
            )
        )
    return rows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=events,
    sizes=st.lists(st.integers(1, 25), max_size=6),
    max_events=st.sampled_from([3, 8, 1_000]),
    velocity_ms=st.sampled_from([60_000, 3_600_000, 30 * DAY_MS]),
)
def test_batches_give_the_features_of_one_by_one(
    spec: list[tuple[int, str, int, int, str, bool]],
    sizes: list[int],
    max_events: int,
    velocity_ms: int,
) -> None:
    rows = build_rows(spec)
    table = table_with_frauds()
    limits = StateLimits(max_events=max_events)
    expected, expected_velocity, expected_duplicates, expected_state = one_by_one(
        rows, table, limits, velocity_ms
    )
    matrix, velocity, duplicates, state = in_batches(rows, sizes, table, limits, velocity_ms)
    assert duplicates == expected_duplicates
    assert matrix.tolist() == [list(values) for values in expected]
    assert velocity == expected_velocity
    # And the state left behind (what the changelog gets) is the same.
    for part in expected_state:
        for account_id, history in part.accounts.items():
            mine = state.account(part.partition, account_id)
            assert mine is not None
            assert list(mine.times_ms) == list(history.times_ms)
            assert list(mine.hashes) == list(history.hashes)
            assert list(mine.amounts_minor) == list(history.amounts_minor)
            assert mine.last_event_time_ms == history.last_event_time_ms
    # Every account the batches touched is marked changed, for the next checkpoint to write.
    changed = {(partition, copy.account_id) for partition, copy in state.take_changed_copies({})}
    assert changed == {(r.partition, r.account_id) for r in rows}


def test_sums_too_large_for_int64_products_give_the_same_features() -> None:
    # The largest column-wise amounts, many of them: the 30-day sums outgrow what int64 can
    # square (s1 > 3.04e9 from the 46th event on), and the z-score is computed exactly anyway.
    amounts = [2**26 - 1 - 7919 * (index % 5) for index in range(120)]
    spec = [(0, ACCOUNTS[0], 600_000, amount, TERMINALS[0], False) for amount in amounts]
    rows = build_rows(spec)
    table = table_with_frauds()
    limits = StateLimits()
    expected, _, _, _ = one_by_one(rows, table, limits, 3_600_000)
    matrix, _, _, _ = in_batches(rows, [10, 40, 30], table, limits, 3_600_000)
    assert matrix.tolist() == [list(values) for values in expected]
    zscores = matrix[:, ALL_FEATURES.index("CUSTOMER_ID_AMOUNT_ZSCORE_30DAY")]
    assert np.count_nonzero(zscores) > 60


def test_negative_remembered_amounts_give_the_same_features() -> None:
    # A history restored from the changelog may hold any int64 amount; one with negative ones
    # (which the API never accepts) is computed event by event, not with column-wise sums.
    amounts = [-(2**62), -(2**62), -(2**51) - 7, 5, 7, 9, 11, 2**20, 3]
    spec = [(0, ACCOUNTS[0], 600_000, amount, TERMINALS[0], False) for amount in amounts]
    rows = build_rows(spec)
    table = table_with_frauds()
    limits = StateLimits()
    expected, _, _, _ = one_by_one(rows, table, limits, 3_600_000)
    matrix, _, _, _ = in_batches(rows, [3], table, limits, 3_600_000)
    assert matrix.tolist() == [list(values) for values in expected]


def test_z_scores_round_a_spread_beyond_64_bits_as_python_does() -> None:
    # With 900 amounts near 2**26 a z-score's spread m*s2 - s1**2 needs more than 64 bits: it
    # is rounded to a double once, ties to even, as float(int) rounds it. At event 892 of this
    # seed the bits below the top 64 decide the rounding, and with it the z-score.
    rng = random.Random(120)
    amounts = [rng.randrange(1 << 25, 1 << 26) for _ in range(900)]
    m, s1, s2 = 892, sum(amounts[:892]), sum(a * a for a in amounts[:892])
    spread = m * s2 - s1 * s1
    shift = spread.bit_length() - 64
    from_top_bits = float(spread >> shift) * 2.0**shift
    numerator = m * amounts[892] - s1
    assert numerator / math.sqrt(from_top_bits) != numerator / math.sqrt(spread)
    spec = [(0, ACCOUNTS[0], 1_800_000, amount, TERMINALS[0], False) for amount in amounts]
    rows = build_rows(spec)
    table = table_with_frauds()
    limits = StateLimits()
    expected, _, _, _ = one_by_one(rows, table, limits, 3_600_000)
    matrix, _, _, _ = in_batches(rows, [400, 300], table, limits, 3_600_000)
    assert matrix.tolist() == [list(values) for values in expected]


@pytest.mark.parametrize("columnwise_min_rows", [1, 1000], ids=["column-wise", "one-by-one"])
def test_a_redelivery_inside_one_batch_is_dropped_once_and_counted(
    columnwise_min_rows: int,
) -> None:
    state = DetectorState()
    state.assign(0, [])
    first = row(0, partition=0, account="a", time_ms=START_MS, amount=100, terminal="t")
    second = row(1, partition=0, account="a", time_ms=START_MS + 1, amount=200, terminal="t")
    observed = observe_batch(
        state,
        TerminalTable(),
        [first, second, first],
        velocity_window_ms=60_000,
        columnwise_min_rows=columnwise_min_rows,
    )
    assert observed.duplicates == 1
    assert [r.event_id for r in observed.features.rows] == ["event-0", "event-1"]
    again = observe_batch(
        state,
        TerminalTable(),
        [second],
        velocity_window_ms=60_000,
        columnwise_min_rows=columnwise_min_rows,
    )
    assert again.duplicates == 1 and len(again.features) == 0


@pytest.mark.parametrize("columnwise_min_rows", [1, 1000], ids=["column-wise", "one-by-one"])
def test_records_below_the_offset_a_restored_state_reflects_are_redeliveries(
    columnwise_min_rows: int,
) -> None:
    """A state written when offset 10 was next, restored by a detector that starts again from
    offset 5 (its predecessor never committed): 5 to 9 are redeliveries, although the state has
    forgotten the ids of 5 and 6 (30 days or more older than its newest event); 10 and 11 are new
    and see the history exactly as the predecessor would have."""
    rows = [
        row(
            i,
            partition=0,
            account="a",
            time_ms=START_MS + i * 10 * DAY_MS,
            amount=100 + i,
            terminal="",
            offset=i,
        )
        for i in range(12)
    ]
    # Another account at offset 6 whose state was not written: its record is processed again.
    other = row(99, partition=0, account="b", time_ms=START_MS, amount=5, terminal="", offset=6)
    # A row that was not consumed has no offset to compare.
    unconsumed = row(
        98, partition=0, account="a", time_ms=START_MS + 120 * DAY_MS, amount=5, terminal=""
    )
    predecessor = DetectorState()
    predecessor.assign(0, [])
    observe_batch(predecessor, TerminalTable(), rows[:10], velocity_window_ms=60_000)
    [(_, written)] = predecessor.take_changed_copies({0: 10})
    remembered = [written.has_seen(event_id_hash(f"event-{i}")) for i in range(5, 10)]
    assert remembered == [False, False, True, True, True]
    successor = DetectorState()
    successor.assign(0, [written.to_proto()])
    observed = observe_batch(
        successor,
        TerminalTable(),
        [*rows[5:6], other, *rows[6:], unconsumed],
        velocity_window_ms=60_000,
        columnwise_min_rows=columnwise_min_rows,
    )
    assert observed.duplicates == 5
    assert [r.event_id for r in observed.features.rows] == [
        "event-99",
        "event-10",
        "event-11",
        "event-98",
    ]
    expected = observe_batch(
        predecessor, TerminalTable(), [*rows[10:], unconsumed], velocity_window_ms=60_000
    )
    assert observed.features.values[1:].tolist() == expected.features.values.tolist()


def test_records_below_a_restored_offset_are_redeliveries_though_forgotten_and_in_order() -> None:
    """Redelivered records the state no longer remembers by id (beyond `max_events`) and timed
    no older than its newest event: their offsets alone tell them apart, column-wise too."""
    limits = StateLimits(max_events=2)
    rows = [
        row(i, partition=0, account="a", time_ms=START_MS, amount=10 + i, terminal="", offset=i)
        for i in range(6)
    ]
    predecessor = DetectorState(limits)
    predecessor.assign(0, [])
    observe_batch(
        predecessor, TerminalTable(), rows[:4], velocity_window_ms=60_000, columnwise_min_rows=1
    )
    [(_, written)] = predecessor.take_changed_copies({0: 4})
    assert not written.has_seen_any([event_id_hash("event-0"), event_id_hash("event-1")])
    successor = DetectorState(limits)
    successor.assign(0, [written.to_proto()])
    observed = observe_batch(
        successor,
        TerminalTable(),
        [rows[0], rows[1], rows[4], rows[5]],
        velocity_window_ms=60_000,
        columnwise_min_rows=1,
    )
    assert observed.duplicates == 2
    assert [r.event_id for r in observed.features.rows] == ["event-4", "event-5"]
    expected = observe_batch(
        predecessor, TerminalTable(), rows[4:], velocity_window_ms=60_000, columnwise_min_rows=1
    )
    assert observed.features.values.tolist() == expected.features.values.tolist()


def test_records_below_a_restored_offset_leave_the_others_column_wise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dropping the redelivered rows leaves an in-order account on the column-wise path."""
    import txguard.fraud.feature_batch as feature_batch

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("one-by-one path taken for in-order events")

    written = DetectorState()
    written.assign(0, [])
    rows = [
        row(
            i,
            partition=0,
            account="a",
            time_ms=START_MS + i * 1000,
            amount=9,
            terminal="",
            offset=i,
        )
        for i in range(8)
    ]
    observe_batch(written, TerminalTable(), rows[:5], velocity_window_ms=60_000)
    [(_, copy)] = written.take_changed_copies({0: 5})
    restored = DetectorState()
    restored.assign(0, [copy.to_proto()])
    monkeypatch.setattr(feature_batch, "record_and_compute", forbidden)
    observed = observe_batch(
        restored, TerminalTable(), rows[2:], velocity_window_ms=60_000, columnwise_min_rows=1
    )
    assert observed.duplicates == 3
    assert [r.event_id for r in observed.features.rows] == ["event-5", "event-6", "event-7"]


def test_the_usual_case_is_computed_column_wise(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-order accounts never take the one-by-one path (which is what makes a batch cheap)."""
    import txguard.fraud.feature_batch as feature_batch

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("one-by-one path taken for in-order events")

    monkeypatch.setattr(feature_batch, "record_and_compute", forbidden)
    state = DetectorState()
    state.assign(0, [])
    rows = [
        row(
            i,
            partition=0,
            account=f"a{i % 7}",
            time_ms=START_MS + i * 1000,
            amount=100 + i,
            terminal="t",
        )
        for i in range(100)
    ]
    observed = observe_batch(state, TerminalTable(), rows, velocity_window_ms=60_000)
    assert len(observed.features) == 100


def test_windows_count_like_window() -> None:
    table = table_with_frauds()
    for terminal in TERMINALS:
        for offset in range(0, 40 * DAY_MS, DAY_MS // 3):
            until = START_MS - offset
            known_by = until + 7 * DAY_MS
            lengths = (DAY_MS, 7 * DAY_MS, 30 * DAY_MS)
            expected = [
                table.window(terminal, after_ms=until - n, until_ms=until, known_by_ms=known_by)
                for n in lengths
            ]
            assert (
                table.windows(terminal, until_ms=until, windows_ms=lengths, known_by_ms=known_by)
                == expected
            )


def test_an_event_beyond_what_its_account_remembers_is_scored_from_itself_alone() -> None:
    """30 days or more behind the account's newest: its windows reach back before anything the
    state holds, so it counts alone, and it is not remembered (the state stays as it was)."""
    state = DetectorState()
    state.assign(0, [])
    newest = row(
        0, partition=0, account="a", time_ms=START_MS + 31 * DAY_MS, amount=500, terminal=""
    )
    late = row(1, partition=0, account="a", time_ms=START_MS, amount=200, terminal="")
    observe_batch(state, TerminalTable(), [newest], velocity_window_ms=60_000)
    observed = observe_batch(state, TerminalTable(), [late], velocity_window_ms=60_000)
    features = dict(zip(ALL_FEATURES, observed.features.values[0].tolist(), strict=True))
    assert features["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 1.0
    assert features["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"] == 2.0
    assert features["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == 30 * 86_400
    account = state.account(0, "a")
    assert account is not None and list(account.times_ms) == [START_MS + 31 * DAY_MS]


def test_terminal_columns_follow_the_table_as_it_changes() -> None:
    """Every change to the table shows in the next batch's terminal columns."""
    table = table_with_frauds()
    rng = np.random.default_rng(11)
    many = [f"term-many-{index}" for index in range(40)]

    def check() -> None:
        ids = [str(t) for t in rng.choice([*TERMINALS, "term-new", "", *many[:10]], size=200)]
        times = START_MS + rng.integers(0, 10 * DAY_MS, size=200)
        expected = [
            list(terminal_features(table, t, int(at))) for t, at in zip(ids, times, strict=True)
        ]
        assert np.asarray(terminal_columns(table, ids, times)).tolist() == expected

    check()
    table._terminals["term-1"].put("late-1", START_MS - 9 * DAY_MS, 0)
    check()
    table._terminals["term-2"].put("late-2", START_MS - 8 * DAY_MS, START_MS + 2 * DAY_MS)
    check()
    table._terminals["term-2"].put("late-2", START_MS - 8 * DAY_MS, 0)  # no longer fraud
    check()
    new = table._terminals["term-new"] = _TerminalEntries()
    new.put("new-1", START_MS - 10 * DAY_MS, START_MS - 3 * DAY_MS)
    check()
    del table._terminals["term-1"]
    check()
    for index, terminal in enumerate(many):
        entries = table._terminals[terminal] = _TerminalEntries()
        entries.put(f"many-{index}", START_MS - (8 + index % 5) * DAY_MS, 0)
    check()


# Times anywhere in int64, so that (t - delay - window) leaves it, and entries around them.
_ANY_TIME = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-40 * DAY_MS, 40 * DAY_MS),
    st.sampled_from([-(2**63), 2**63 - 1, 0, 7 * DAY_MS, 8 * DAY_MS]),
)


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(
        st.tuples(st.sampled_from(["t1", "t2", ""]), _ANY_TIME, st.one_of(st.just(0), _ANY_TIME)),
        max_size=40,
    ),
    queries=st.lists(st.tuples(st.sampled_from(["t1", "t2", "t3", ""]), _ANY_TIME), max_size=20),
)
@example(
    # t - delay leaves int64 at the lowest times: computed in int64 it would wrap round and
    # count the newest entries.
    entries=[("t1", -(2**63), 1), ("t1", 0, 0), ("t1", 2**63 - 8 * DAY_MS, 2**63 - 1)],
    queries=[("t1", -(2**63)), ("t1", -(2**63) + 8 * DAY_MS), ("t1", 2**63 - 1)],
)
def test_terminal_columns_equal_terminal_features_at_any_time(
    entries: list[tuple[str, int, int]], queries: list[tuple[str, int]]
) -> None:
    table = TerminalTable()
    for index, (terminal, occurred, known) in enumerate(entries):
        held = table._terminals.setdefault(terminal, _TerminalEntries())
        held.put(f"tx-{index}", occurred, known)
    ids = [terminal for terminal, _ in queries]
    times = np.array([at for _, at in queries], dtype=np.int64)
    expected = [list(terminal_features(table, t, at)) for t, at in queries]
    assert np.asarray(terminal_columns(table, ids, times)).tolist() == expected


def test_terminal_columns_of_a_table_filled_after_the_first_batch() -> None:
    table = TerminalTable()
    ids = ["term-1", "term-2", ""] * 4
    times = START_MS + np.arange(12, dtype=np.int64) * DAY_MS
    assert np.asarray(terminal_columns(table, ids, times)).tolist() == [[0.0] * 6] * 12
    filled = table_with_frauds()
    table._terminals.update(filled._terminals)
    expected = [
        list(terminal_features(table, t, int(at))) for t, at in zip(ids, times, strict=True)
    ]
    assert any(row[0] for row in expected)
    assert np.asarray(terminal_columns(table, ids, times)).tolist() == expected


def test_a_batch_of_a_partition_not_restored_is_refused() -> None:
    state = DetectorState()
    state.assign(0, [])
    rows = [
        row(i, partition=i % 2, account="a", time_ms=START_MS + i, amount=5, terminal="")
        for i in range(12)
    ]
    with pytest.raises(StateNotRestored) as refused:
        observe_batch(state, TerminalTable(), rows, velocity_window_ms=60_000)
    assert refused.value.partition == 1
    # Refused whole: the partition it holds is as it was, nothing marked for the changelog.
    assert state.account(0, "a") is None
    assert state.take_changed_copies({}) == []
