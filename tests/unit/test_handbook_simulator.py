"""The handbook transaction simulator: every generation rule and every fraud scenario."""

from __future__ import annotations

import math
import time
from datetime import date, datetime

import numpy as np
import pandas as pd
import pytest

from txguard.simulate.handbook import (
    TRANSACTION_COLUMNS,
    FraudPlan,
    FraudScenario,
    SimulationConfig,
    SimulationResult,
    compromise_days,
    customer_profiles,
    inject_frauds,
    run_simulation,
    simulate,
    summarize,
    terminal_profiles,
    terminals_within_radius,
    times_of_day,
)

# The handbook's run with the default configuration.
HANDBOOK_TRANSACTIONS = 1_754_155
HANDBOOK_FRAUD_RATE = 14_681 / 1_754_155
HANDBOOK_SCENARIO_SHARES = {1: 973 / 14_681, 2: 9_077 / 14_681, 3: 4_631 / 14_681}

SMALL = SimulationConfig(customers=300, terminals=600, days=75, radius=8.0, seed=11)
# Ids that never occur in the hand-made frames: compromising them changes nothing.
UNUSED = 10_000


@pytest.fixture(scope="module")
def small() -> SimulationResult:
    return run_simulation(SMALL)


def _frame(rows: list[tuple[int, int, int, float]]) -> pd.DataFrame:
    """Transactions from (customer, terminal, day, amount) rows, in the given order."""
    customers, terminals, days, amounts = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(len(rows), dtype=np.int64),
            "CUSTOMER_ID": np.array(customers, dtype=np.int64),
            "TERMINAL_ID": np.array(terminals, dtype=np.int64),
            "TX_TIME_DAYS": np.array(days, dtype=np.int64),
            "TX_AMOUNT": np.array(amounts, dtype=np.float64),
        }
    )


def _plan(
    days: int,
    terminals: dict[int, list[int]] | None = None,
    customers: dict[int, list[int]] | None = None,
) -> FraudPlan:
    """A plan compromising only the given ids on the given days (unused ids elsewhere)."""
    compromised_terminals = np.full((days, 2), UNUSED, dtype=np.int64)
    compromised_customers = np.full((days, 3), UNUSED, dtype=np.int64)
    for day, ids in (terminals or {}).items():
        compromised_terminals[day, : len(ids)] = ids
    for day, ids in (customers or {}).items():
        compromised_customers[day, : len(ids)] = ids
    return FraudPlan(compromised_terminals, compromised_customers)


# --- configuration --------------------------------------------------------------------------


def test_defaults_are_the_handbooks_run() -> None:
    config = SimulationConfig()
    assert (config.customers, config.terminals, config.days) == (5000, 10000, 183)
    assert (config.start_date, config.radius, config.seed) == (date(2018, 4, 1), 5.0, 0)
    assert config.end_date == date(2018, 9, 30)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"customers": 2}, "customers must be an integer >= 3"),
        ({"customers": True}, "customers must be an integer"),
        ({"terminals": 1}, "terminals must be an integer >= 2"),
        ({"terminals": 2.0}, "terminals must be an integer"),
        ({"days": 0}, "days must be an integer >= 1"),
        ({"radius": 0.0}, "radius must be a finite number > 0"),
        ({"radius": -1}, "radius must be a finite number > 0"),
        ({"radius": math.nan}, "radius must be a finite number > 0"),
        ({"radius": math.inf}, "radius must be a finite number > 0"),
        ({"radius": "5"}, "radius must be a finite number > 0"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"start_date": datetime(2018, 4, 1, 12)}, "start_date must be a datetime.date"),
        ({"start_date": "2018-04-01"}, "start_date must be a datetime.date"),
        ({"start_date": date(2262, 3, 1), "days": 60}, "must lie within"),
        ({"start_date": date(1600, 1, 1)}, "must lie within"),
        ({"start_date": date(9999, 12, 1), "days": 60}, "must lie within"),
    ],
)
def test_config_rejects_invalid_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulationConfig(**changes)  # type: ignore[arg-type]


# --- customers, terminals and their links ---------------------------------------------------


def test_customer_profiles_follow_the_handbook_distributions() -> None:
    customers = customer_profiles(20_000, seed=3)
    assert list(customers.columns) == [
        "CUSTOMER_ID",
        "x",
        "y",
        "mean_amount",
        "std_amount",
        "mean_nb_tx_per_day",
    ]
    assert customers["CUSTOMER_ID"].tolist() == list(range(20_000))
    for column, low, high in (
        ("x", 0, 100),
        ("y", 0, 100),
        ("mean_amount", 5, 100),
        ("mean_nb_tx_per_day", 0, 4),
    ):
        values = customers[column]
        assert values.min() >= low and values.max() < high, column
        # Uniform: the mean sits in the middle of the range.
        assert values.mean() == pytest.approx((low + high) / 2, rel=0.02), column
    assert (customers["std_amount"] == customers["mean_amount"] / 2).all()


def test_a_customers_profile_depends_only_on_the_seed_and_its_id() -> None:
    few = customer_profiles(50, seed=5)
    many = customer_profiles(400, seed=5)
    pd.testing.assert_frame_equal(many.iloc[:50], few)
    assert not customer_profiles(50, seed=6).equals(few)
    pd.testing.assert_frame_equal(
        terminal_profiles(400, seed=5).iloc[:70], terminal_profiles(70, 5)
    )


def test_terminal_profiles_are_uniform_on_the_grid() -> None:
    terminals = terminal_profiles(20_000, seed=3)
    assert list(terminals.columns) == ["TERMINAL_ID", "x", "y"]
    for column in ("x", "y"):
        assert terminals[column].between(0, 100, inclusive="left").all()
        assert terminals[column].mean() == pytest.approx(50, rel=0.02)


def test_a_customer_uses_the_terminals_strictly_within_the_radius() -> None:
    customers = pd.DataFrame({"CUSTOMER_ID": [0, 1], "x": [50.0, 0.0], "y": [50.0, 0.0]})
    terminals = pd.DataFrame(
        {
            "TERMINAL_ID": [0, 1, 2, 3, 4],
            # Distances to customer 0: 5 (the radius itself), 2, 4.999, 0, far away.
            "x": [53.0, 52.0, 50.0, 50.0, 90.0],
            "y": [54.0, 50.0, 54.999, 50.0, 90.0],
        }
    )
    links = terminals_within_radius(customers, terminals, radius=5.0)
    assert links.of_customer(0).tolist() == [1, 2, 3]
    assert links.of_customer(1).tolist() == []
    assert links.counts.tolist() == [3, 0]


def test_every_transaction_uses_a_terminal_within_the_radius(small: SimulationResult) -> None:
    df = small.transactions
    customer = small.customers.set_index("CUSTOMER_ID").loc[df["CUSTOMER_ID"]]
    terminal = small.terminals.set_index("TERMINAL_ID").loc[df["TERMINAL_ID"]]
    dx = customer["x"].to_numpy() - terminal["x"].to_numpy()
    dy = customer["y"].to_numpy() - terminal["y"].to_numpy()
    assert (np.sqrt(dx * dx + dy * dy) < SMALL.radius).all()


def test_a_customers_terminals_are_used_uniformly() -> None:
    config = SimulationConfig(customers=3, terminals=40, days=400, radius=30.0, seed=2)
    result = run_simulation(config)
    df = result.transactions
    busiest = int(np.bincount(df["CUSTOMER_ID"].to_numpy()).argmax())
    available = result.customer_terminals.of_customer(busiest)
    used = df.loc[df["CUSTOMER_ID"] == busiest, "TERMINAL_ID"].value_counts()
    assert set(used.index) <= set(available.tolist())
    expected = used.sum() / len(available)
    # Every available terminal gets its share, within generous sampling noise.
    assert len(used) == len(available)
    assert used.max() < 2 * expected and used.min() > expected / 2


def test_customers_without_terminals_make_no_transactions() -> None:
    config = SimulationConfig(customers=60, terminals=8, days=30, radius=10.0, seed=4)
    result = run_simulation(config)
    stranded = np.flatnonzero(result.customer_terminals.counts == 0)
    assert 0 < len(stranded) < config.customers, "the configuration must strand some customers"
    active = set(result.transactions["CUSTOMER_ID"].unique().tolist())
    assert active.isdisjoint(stranded.tolist())
    assert active, "customers with terminals do transact"


# --- transactions ---------------------------------------------------------------------------


def test_columns_and_types(small: SimulationResult) -> None:
    df = small.transactions
    assert tuple(df.columns) == TRANSACTION_COLUMNS
    assert df["TX_DATETIME"].dtype == np.dtype("datetime64[ns]")
    assert df["TX_AMOUNT"].dtype == np.dtype("float64")
    for column in set(TRANSACTION_COLUMNS) - {"TX_DATETIME", "TX_AMOUNT"}:
        assert df[column].dtype == np.dtype("int64"), column
    assert len(df) > 10_000


def test_ids_number_the_transactions_in_time_order(small: SimulationResult) -> None:
    df = small.transactions
    assert df["TRANSACTION_ID"].tolist() == list(range(len(df)))
    assert df["TX_DATETIME"].is_monotonic_increasing
    assert df.index.tolist() == list(range(len(df)))


def test_simultaneous_transactions_keep_the_generation_order(small: SimulationResult) -> None:
    # Generation runs customer by customer, so the stable time sort keeps ties by customer.
    df = small.transactions
    seconds = df["TX_TIME_SECONDS"].to_numpy()
    customers = df["CUSTOMER_ID"].to_numpy()
    tie = seconds[1:] == seconds[:-1]
    assert tie.sum() > 20
    assert (customers[1:][tie] >= customers[:-1][tie]).all()


def test_time_columns_agree_and_times_of_day_are_inside_the_day(small: SimulationResult) -> None:
    df = small.transactions
    seconds = df["TX_TIME_SECONDS"].to_numpy()
    assert (df["TX_TIME_DAYS"].to_numpy() == seconds // 86_400).all()
    time_of_day = seconds % 86_400
    assert time_of_day.min() > 0 and time_of_day.max() < 86_400
    start = pd.Timestamp(SMALL.start_date)
    assert (df["TX_DATETIME"] == start + pd.to_timedelta(seconds, unit="s")).all()
    assert df["TX_TIME_DAYS"].min() == 0 and df["TX_TIME_DAYS"].max() == SMALL.days - 1
    # int(N(43200, 20000)) kept inside (0, 86400): centred on noon.
    assert time_of_day.mean() == pytest.approx(43_200, abs=400)


def test_a_time_of_day_is_truncated_and_kept_strictly_inside_the_day() -> None:
    draws = np.array([-1.5, -0.7, 0.2, 1.0, 43_200.9, 86_399.99, 86_400.0, 90_000.0])
    seconds, kept = times_of_day(draws)
    assert seconds.tolist() == [-1, 0, 0, 1, 43_200, 86_399, 86_400, 90_000]
    assert kept.tolist() == [False, False, False, True, True, True, False, False]


def test_transaction_counts_follow_the_customers_daily_rate(small: SimulationResult) -> None:
    df = small.transactions
    rate = small.customers["mean_nb_tx_per_day"].to_numpy()
    has_terminal = small.customer_terminals.counts > 0
    # Share of N(43200, 20000) times kept after truncation to (0, 86400).
    kept = math.erf(43_199 / 20_000 / math.sqrt(2))
    expected = rate[has_terminal].sum() * SMALL.days * kept
    assert len(df) == pytest.approx(expected, rel=0.02)


def test_amounts_follow_the_customers_profile(small: SimulationResult) -> None:
    df = small.transactions
    untouched = df[df["TX_FRAUD_SCENARIO"] != FraudScenario.COMPROMISED_CUSTOMER]
    profile = small.customers.set_index("CUSTOMER_ID").loc[untouched["CUSTOMER_ID"]]
    ratio = untouched["TX_AMOUNT"].to_numpy() / profile["mean_amount"].to_numpy()
    # amount / mean is N(1, 1/2) with its negatives (2.3%) redrawn from U(0, 2).
    below = 0.5 * (1 + math.erf(-2 / math.sqrt(2)))
    density = math.exp(-2) / math.sqrt(2 * math.pi)
    expected_mean = (1 - below + 0.5 * density) + below * 1.0
    expected_square = (1.25 * (1 - below) + 0.5 * density) + below * 4 / 3
    assert ratio.mean() == pytest.approx(expected_mean, abs=0.01)
    assert ratio.std() == pytest.approx(math.sqrt(expected_square - expected_mean**2), abs=0.01)


def test_amounts_are_whole_cents(small: SimulationResult) -> None:
    amounts = small.transactions["TX_AMOUNT"].to_numpy()
    assert (np.round(amounts, 2) == amounts).all()
    assert (amounts >= 0).all()


def test_same_seed_gives_the_identical_frame() -> None:
    config = SimulationConfig(customers=80, terminals=150, days=20, radius=10.0, seed=9)
    pd.testing.assert_frame_equal(simulate(config), simulate(config), check_exact=True)
    other = simulate(SimulationConfig(customers=80, terminals=150, days=20, radius=10.0, seed=10))
    assert not other.equals(simulate(config))


# --- fraud scenarios on the simulated frame -------------------------------------------------


def test_fraud_label_matches_the_scenario(small: SimulationResult) -> None:
    df = small.transactions
    assert set(df["TX_FRAUD_SCENARIO"].unique()) == {0, 1, 2, 3}
    assert (df["TX_FRAUD"] == (df["TX_FRAUD_SCENARIO"] != 0).astype(np.int64)).all()


def test_scenario_1_every_amount_above_220_is_fraud(small: SimulationResult) -> None:
    df = small.transactions
    genuine = df[df["TX_FRAUD_SCENARIO"] == FraudScenario.GENUINE]
    assert (genuine["TX_AMOUNT"] <= 220).all()
    high = df[df["TX_FRAUD_SCENARIO"] == FraudScenario.HIGH_AMOUNT]
    assert len(high) > 0 and (high["TX_AMOUNT"] > 220).all()


def test_the_plan_compromises_distinct_ids_every_day_but_the_last(small: SimulationResult) -> None:
    plan = small.fraud_plan
    assert plan.days == compromise_days(small.transactions) == SMALL.days - 1
    assert plan.compromised_terminals.shape == (plan.days, 2)
    assert plan.compromised_customers.shape == (plan.days, 3)
    for row in plan.compromised_terminals:
        assert len(set(row.tolist())) == 2 and set(row.tolist()) <= set(range(SMALL.terminals))
    for row in plan.compromised_customers:
        assert len(set(row.tolist())) == 3 and set(row.tolist()) <= set(range(SMALL.customers))


def test_scenario_2_labels_compromised_terminals_within_28_days(small: SimulationResult) -> None:
    df = small.transactions
    # The handbook's own formulation: one boolean filter per compromise day.
    in_window = np.zeros(len(df), dtype=bool)
    for day, terminals in enumerate(small.fraud_plan.compromised_terminals):
        in_window |= (
            (df["TX_TIME_DAYS"] >= day)
            & (df["TX_TIME_DAYS"] < day + 28)
            & df["TERMINAL_ID"].isin(terminals)
        ).to_numpy()
    scenario = df["TX_FRAUD_SCENARIO"].to_numpy()
    assert in_window.sum() > 100
    assert (in_window[scenario == FraudScenario.COMPROMISED_TERMINAL]).all()
    # Only scenario 3, applied later, may relabel a compromised terminal's transaction.
    assert np.isin(scenario[in_window], [2, 3]).all()


def test_scenario_3_labels_only_compromised_customers_within_14_days(
    small: SimulationResult,
) -> None:
    df = small.transactions
    in_window = np.zeros(len(df), dtype=bool)
    for day, customers in enumerate(small.fraud_plan.compromised_customers):
        in_window |= (
            (df["TX_TIME_DAYS"] >= day)
            & (df["TX_TIME_DAYS"] < day + 14)
            & df["CUSTOMER_ID"].isin(customers)
        ).to_numpy()
    scenario = df["TX_FRAUD_SCENARIO"].to_numpy()
    chosen = scenario == FraudScenario.COMPROMISED_CUSTOMER
    assert chosen.sum() > 50
    assert in_window[chosen].all()
    # About a third of the windowed transactions (overlapping windows pick a few twice).
    assert chosen.sum() / in_window.sum() == pytest.approx(1 / 3, abs=0.05)


# --- fraud injection on hand-made frames ----------------------------------------------------


def test_scenario_2_covers_exactly_the_28_days_from_the_compromise() -> None:
    rows = [(1, 7, day, 10.0) for day in range(45)] + [(1, 8, day, 10.0) for day in range(45)]
    plan = _plan(44, terminals={3: [7]})
    labelled = inject_frauds(_frame(rows), plan, np.random.default_rng(0))
    on_7 = labelled[labelled["TERMINAL_ID"] == 7]
    fraud_days = on_7.loc[on_7["TX_FRAUD"] == 1, "TX_TIME_DAYS"].tolist()
    assert fraud_days == list(range(3, 31))
    assert set(on_7.loc[on_7["TX_FRAUD"] == 1, "TX_FRAUD_SCENARIO"]) == {2}
    assert (labelled.loc[labelled["TERMINAL_ID"] == 8, "TX_FRAUD"] == 0).all()


def test_overlapping_terminal_compromises_extend_the_window() -> None:
    rows = [(1, 7, day, 10.0) for day in range(60)]
    plan = _plan(59, terminals={0: [7], 20: [7, 9]})
    labelled = inject_frauds(_frame(rows), plan, np.random.default_rng(0))
    assert labelled.loc[labelled["TX_FRAUD"] == 1, "TX_TIME_DAYS"].tolist() == list(range(48))


def test_scenario_2_overrides_scenario_1() -> None:
    rows = [(1, 7, 5, 300.0), (1, 7, 40, 300.0), (1, 8, 5, 220.0), (1, 8, 5, 220.01)]
    labelled = inject_frauds(_frame(rows), _plan(41, terminals={2: [7]}), np.random.default_rng(0))
    assert labelled["TX_FRAUD_SCENARIO"].tolist() == [2, 1, 0, 1]
    assert labelled["TX_FRAUD"].tolist() == [1, 1, 0, 1]
    assert labelled["TX_AMOUNT"].tolist() == [300.0, 300.0, 220.0, 220.01]


def test_scenario_3_multiplies_a_third_of_the_windowed_amounts_by_5() -> None:
    inside = [(5, 1, 2 + index % 14, 10.0 + index) for index in range(31)]
    outside = [(5, 1, day, 1.11) for day in (0, 1, 16, 17, 20)] + [(6, 1, 5, 2.22)] * 4
    frame = _frame(inside + outside)
    labelled = inject_frauds(frame, _plan(21, customers={2: [5]}), np.random.default_rng(3))
    chosen = labelled["TX_FRAUD_SCENARIO"] == FraudScenario.COMPROMISED_CUSTOMER
    assert chosen.sum() == 31 // 3
    assert chosen[: len(inside)].sum() == 10 and not chosen[len(inside) :].any()
    assert (labelled.loc[chosen, "TX_FRAUD"] == 1).all()
    assert (labelled.loc[chosen, "TX_AMOUNT"] == frame.loc[chosen, "TX_AMOUNT"] * 5).all()
    assert (labelled.loc[~chosen, "TX_AMOUNT"] == frame.loc[~chosen, "TX_AMOUNT"]).all()
    assert (labelled.loc[~chosen, "TX_FRAUD"] == 0).all()


def test_scenario_3_counts_the_three_customers_together() -> None:
    rows = [(1, 1, 0, 1.0)] * 4 + [(2, 1, 3, 1.0)] * 4 + [(3, 1, 13, 1.0)] * 3 + [(3, 1, 14, 1.0)]
    labelled = inject_frauds(
        _frame(rows), _plan(15, customers={0: [1, 2, 3]}), np.random.default_rng(1)
    )
    # 11 transactions in days [0, 14) of customers 1-3: int(11 / 3) = 3 frauds.
    assert labelled["TX_FRAUD"].sum() == 3
    assert labelled["TX_FRAUD"].iloc[-1] == 0


def test_scenario_3_draws_among_the_candidates_in_frame_order() -> None:
    # Two compromised customers interleaved, a third customer's rows in between.
    rows = [(5 + index % 3, 1, index % 4, 1.0) for index in range(30)]
    frame = _frame(rows)
    labelled = inject_frauds(frame, _plan(4, customers={0: [5, 6]}), np.random.default_rng(8))
    candidates = np.flatnonzero(frame["CUSTOMER_ID"].isin([5, 6]).to_numpy())
    expected = np.random.default_rng(8).choice(candidates, size=len(candidates) // 3, replace=False)
    chosen = np.flatnonzero(labelled["TX_FRAUD_SCENARIO"].to_numpy() == 3)
    assert chosen.tolist() == sorted(expected.tolist())


def test_scenario_3_overrides_scenarios_1_and_2_and_keeps_whole_cents() -> None:
    rows = [(5, 7, 1, 250.33)] * 6
    plan = _plan(2, terminals={0: [7]}, customers={1: [5]})
    labelled = inject_frauds(_frame(rows), plan, np.random.default_rng(0))
    assert sorted(labelled["TX_FRAUD_SCENARIO"].tolist()) == [2, 2, 2, 2, 3, 3]
    assert sorted(labelled["TX_AMOUNT"].tolist()) == [250.33] * 4 + [1251.65] * 2
    assert labelled["TX_FRAUD"].tolist() == [1] * 6


def test_a_customer_compromised_twice_can_be_multiplied_twice() -> None:
    rows = [(5, 1, 1, 1.0)] * 3
    plan = _plan(3, customers={0: [5], 1: [5]})
    seeds_with_a_repeat = []
    for seed in range(30):
        labelled = inject_frauds(_frame(rows), plan, np.random.default_rng(seed))
        assert labelled["TX_FRAUD"].sum() in (1, 2)
        if 25.0 in labelled["TX_AMOUNT"].tolist():
            seeds_with_a_repeat.append(seed)
    # Each day draws 1 of the 3 afresh, as the handbook does: sometimes the same one twice.
    assert seeds_with_a_repeat


def test_compromises_happen_only_on_the_plans_days() -> None:
    rows = [(5, 7, day, 1.0) for day in range(10)]
    labelled = inject_frauds(_frame(rows), _plan(0), np.random.default_rng(0))
    assert labelled["TX_FRAUD"].sum() == 0


def test_inject_frauds_leaves_its_input_alone_and_is_deterministic() -> None:
    frame = _frame([(5, 7, day % 5, 300.0 - day) for day in range(30)])
    before = frame.copy()
    plan = _plan(5, terminals={1: [7]}, customers={0: [5]})
    first = inject_frauds(frame, plan, np.random.default_rng(42))
    second = inject_frauds(frame, plan, np.random.default_rng(42))
    pd.testing.assert_frame_equal(frame, before)
    pd.testing.assert_frame_equal(first, second)


def test_inject_frauds_rejects_frames_it_cannot_label() -> None:
    frame = _frame([(1, 1, 0, 1.0)])
    with pytest.raises(ValueError, match="TERMINAL_ID"):
        inject_frauds(frame.drop(columns="TERMINAL_ID"), _plan(1), np.random.default_rng(0))
    frame.loc[0, "TX_TIME_DAYS"] = -1
    with pytest.raises(ValueError, match="TX_TIME_DAYS must not be negative"):
        inject_frauds(frame, _plan(1), np.random.default_rng(0))


def test_fraud_plan_rejects_mismatched_days() -> None:
    with pytest.raises(ValueError, match="same days"):
        FraudPlan(np.zeros((3, 2), dtype=np.int64), np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="2-D"):
        FraudPlan(np.zeros(3, dtype=np.int64), np.zeros((3, 3), dtype=np.int64))


# --- summary --------------------------------------------------------------------------------


def test_summarize_counts_rates_and_shares() -> None:
    df = pd.DataFrame(
        {
            "TX_DATETIME": pd.to_datetime(
                ["2018-04-02 10:00:00", "2018-04-01 09:00:00", "2018-04-03 08:00:00"] * 2
            ),
            "TX_FRAUD": [0, 1, 1, 1, 0, 1],
            "TX_FRAUD_SCENARIO": [0, 1, 2, 2, 0, 3],
        }
    )
    summary = summarize(df)
    assert (summary.transactions, summary.frauds) == (6, 4)
    assert summary.fraud_rate == pytest.approx(4 / 6)
    assert summary.scenario_shares == {1: 0.25, 2: 0.5, 3: 0.25}
    assert summary.first == datetime(2018, 4, 1, 9)
    assert summary.last == datetime(2018, 4, 3, 8)
    assert "frauds:       4 (66.667%)" in summary.describe()


def test_summarize_an_empty_frame_and_an_unlabelled_one() -> None:
    empty = summarize(
        pd.DataFrame(
            {
                "TX_DATETIME": pd.Series([], dtype="datetime64[ns]"),
                "TX_FRAUD": pd.Series([], dtype="int64"),
                "TX_FRAUD_SCENARIO": pd.Series([], dtype="int64"),
            }
        )
    )
    assert (empty.transactions, empty.frauds, empty.fraud_rate) == (0, 0, 0.0)
    assert empty.scenario_shares == {1: 0.0, 2: 0.0, 3: 0.0}
    assert empty.first is None and empty.last is None
    with pytest.raises(ValueError, match="TX_FRAUD column is missing"):
        summarize(pd.DataFrame({"TX_DATETIME": pd.to_datetime(["2018-04-01"])}))


# --- the handbook's run ---------------------------------------------------------------------


def test_default_run_matches_the_handbooks_totals() -> None:
    started = time.perf_counter()
    df = simulate(SimulationConfig())
    elapsed = time.perf_counter() - started
    summary = summarize(df)
    figures = (
        f"default run: {summary.transactions:,} transactions "
        f"({summary.transactions / HANDBOOK_TRANSACTIONS - 1:+.2%} vs {HANDBOOK_TRANSACTIONS:,}), "
        f"fraud rate {summary.fraud_rate:.3%} "
        f"({summary.fraud_rate / HANDBOOK_FRAUD_RATE - 1:+.2%} vs {HANDBOOK_FRAUD_RATE:.3%}), "
        f"scenario shares { ({k: round(v, 3) for k, v in summary.scenario_shares.items()}) }, "
        f"{elapsed:.1f} s"
    )
    print(figures)
    assert summary.transactions == pytest.approx(HANDBOOK_TRANSACTIONS, rel=0.05), figures
    assert summary.fraud_rate == pytest.approx(HANDBOOK_FRAUD_RATE, rel=0.05), figures
    for scenario, share in HANDBOOK_SCENARIO_SHARES.items():
        assert summary.scenario_shares[scenario] == pytest.approx(share, abs=0.05), figures
    assert summary.first is not None and summary.first.date() == date(2018, 4, 1)
    assert summary.last is not None and summary.last.date() == date(2018, 9, 30)
