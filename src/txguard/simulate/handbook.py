"""The transaction simulator of the fraud-detection handbook, vectorised.

Follows the generation procedure of "Reproducible Machine Learning for Credit Card Fraud
Detection - Practical Handbook" (Le Borgne et al., chapter "Transaction data simulator"): its
rules, not its random draws.

1. Customers: location (x, y) ~ U(0, 100)^2, mean amount ~ U(5, 100) with std = mean / 2, mean
   number of transactions per day ~ U(0, 4).
2. Terminals: location (x, y) ~ U(0, 100)^2.
3. A customer uses the terminals at Euclidean distance strictly less than the radius.
4. Each day, each customer makes Poisson(mean per day) transaction attempts. An attempt's time
   of day is int(N(43200, 20000)) seconds and is kept only when 0 < t < 86400; its amount is
   N(mean, std), redrawn from U(0, 2 * mean) when negative, rounded to cents; its terminal is
   drawn uniformly among the customer's. A customer with no terminal makes no transaction.
5. Transactions are sorted by time (stable), then numbered 0..n-1 in that order.
6. Frauds, each scenario overriding the label of the one before:
   (1) every amount above 220 is fraud;
   (2) each day 2 random terminals are compromised: all their transactions in days
       [day, day + 28) are fraud;
   (3) each day 3 random customers are compromised: of their transactions in days
       [day, day + 14), int(n / 3) chosen at random have their amount multiplied by 5 and are
       fraud.
   Compromise days are 0 .. max(TX_TIME_DAYS) - 1, as in the handbook.

Every random stream is derived from the seed and a fixed stream number, so the same seed gives
the identical frame, and customer i's profile depends only on the seed (not on the number of
customers, terminals or days).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import IntEnum
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from txguard.simulate.dataset import amount_minor

SECONDS_PER_DAY: Final = 86_400

# Generation parameters of the handbook.
GRID_SIZE: Final = 100.0
MEAN_AMOUNT_RANGE: Final = (5.0, 100.0)
MEAN_TRANSACTIONS_PER_DAY_RANGE: Final = (0.0, 4.0)
TIME_OF_DAY_MEAN_SECONDS: Final = SECONDS_PER_DAY / 2
TIME_OF_DAY_STD_SECONDS: Final = 20_000.0

# Fraud scenario parameters of the handbook.
HIGH_AMOUNT_THRESHOLD_MINOR: Final = 22_000
TERMINALS_COMPROMISED_PER_DAY: Final = 2
TERMINAL_COMPROMISE_DAYS: Final = 28
CUSTOMERS_COMPROMISED_PER_DAY: Final = 3
CUSTOMER_COMPROMISE_DAYS: Final = 14
CUSTOMER_FRAUD_SHARE_DIVISOR: Final = 3
CUSTOMER_FRAUD_AMOUNT_FACTOR: Final = 5

TRANSACTION_COLUMNS: Final = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_TIME_SECONDS",
    "TX_TIME_DAYS",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)
CUSTOMER_COLUMNS: Final = (
    "CUSTOMER_ID",
    "x",
    "y",
    "mean_amount",
    "std_amount",
    "mean_nb_tx_per_day",
)
TERMINAL_COLUMNS: Final = ("TERMINAL_ID", "x", "y")

# One independent random stream per purpose, so changing one input never shifts another's draws.
_STREAM_CUSTOMERS: Final = 0
_STREAM_TERMINALS: Final = 1
_STREAM_TRANSACTIONS: Final = 2
_STREAM_FRAUD_PLAN: Final = 3
_STREAM_FRAUD_SELECTION: Final = 4

# Customer x terminal distances are computed this many cells at a time, to bound memory.
_DISTANCE_BLOCK_CELLS: Final = 2_000_000

# TX_DATETIME is nanosecond-based, which bounds the dates it can hold.
_EARLIEST_DATE: Final = date(1677, 9, 22)
_LATEST_DATE: Final = date(2262, 4, 10)


class FraudScenario(IntEnum):
    """TX_FRAUD_SCENARIO values."""

    GENUINE = 0
    HIGH_AMOUNT = 1
    COMPROMISED_TERMINAL = 2
    COMPROMISED_CUSTOMER = 3


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SimulationConfig:
    """Size, period, radius and seed of a simulation; the defaults are the handbook's run."""

    customers: int = 5000
    terminals: int = 10000
    days: int = 183
    start_date: date = date(2018, 4, 1)
    radius: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.customers) or self.customers < CUSTOMERS_COMPROMISED_PER_DAY:
            raise ValueError(
                f"customers must be an integer >= {CUSTOMERS_COMPROMISED_PER_DAY} (fraud "
                f"scenario 3 compromises {CUSTOMERS_COMPROMISED_PER_DAY} a day), "
                f"got {self.customers!r}"
            )
        if not _is_int(self.terminals) or self.terminals < TERMINALS_COMPROMISED_PER_DAY:
            raise ValueError(
                f"terminals must be an integer >= {TERMINALS_COMPROMISED_PER_DAY} (fraud "
                f"scenario 2 compromises {TERMINALS_COMPROMISED_PER_DAY} a day), "
                f"got {self.terminals!r}"
            )
        if not _is_int(self.days) or self.days < 1:
            raise ValueError(f"days must be an integer >= 1, got {self.days!r}")
        if not isinstance(self.start_date, date) or isinstance(self.start_date, datetime):
            raise ValueError(
                f"start_date must be a datetime.date (no time of day), got {self.start_date!r}"
            )
        try:
            end_date = self.end_date
        except OverflowError:
            end_date = date.max
        if self.start_date < _EARLIEST_DATE or end_date > _LATEST_DATE:
            raise ValueError(
                f"the simulated period {self.start_date}..{end_date} must lie within "
                f"{_EARLIEST_DATE}..{_LATEST_DATE} (TX_DATETIME is nanosecond-based)"
            )
        radius_is_number = isinstance(self.radius, int | float) and not isinstance(
            self.radius, bool
        )
        if not radius_is_number or not math.isfinite(self.radius) or self.radius <= 0:
            raise ValueError(f"radius must be a finite number > 0, got {self.radius!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")

    @property
    def end_date(self) -> date:
        """The last simulated day."""
        return self.start_date + timedelta(days=self.days - 1)


@dataclass(frozen=True)
class CustomerTerminals:
    """The terminals each customer uses, as compressed rows: customer i has
    terminal_ids[offsets[i]:offsets[i + 1]], in terminal-table order."""

    offsets: npt.NDArray[np.int64]
    terminal_ids: npt.NDArray[np.int64]

    @property
    def counts(self) -> npt.NDArray[np.int64]:
        """Number of terminals of each customer."""
        return np.diff(self.offsets)

    def of_customer(self, customer: int) -> npt.NDArray[np.int64]:
        return self.terminal_ids[self.offsets[customer] : self.offsets[customer + 1]]


@dataclass(frozen=True)
class FraudPlan:
    """Who is compromised on which day: row d lists the terminals (scenario 2) and the customers
    (scenario 3) compromised on day d. Ids absent from the transactions have no effect."""

    compromised_terminals: npt.NDArray[np.int64]
    compromised_customers: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        for name in ("compromised_terminals", "compromised_customers"):
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.ndim != 2:
                raise ValueError(f"{name} must be a 2-D array (one row per day)")
        if len(self.compromised_terminals) != len(self.compromised_customers):
            raise ValueError(
                "compromised_terminals and compromised_customers must cover the same days, "
                f"got {len(self.compromised_terminals)} and {len(self.compromised_customers)}"
            )

    @property
    def days(self) -> int:
        return len(self.compromised_terminals)


@dataclass(frozen=True)
class SimulationResult:
    """Everything one simulation produced: both profile tables, the fraud plan, the frame."""

    config: SimulationConfig
    customers: pd.DataFrame
    terminals: pd.DataFrame
    customer_terminals: CustomerTerminals
    fraud_plan: FraudPlan
    transactions: pd.DataFrame


@dataclass(frozen=True)
class SimulationSummary:
    """Headline figures of a labelled transaction frame."""

    transactions: int
    frauds: int
    fraud_rate: float
    # Share of the frauds per scenario 1..3 (each in 0..1; all 0.0 when there is no fraud).
    scenario_shares: dict[int, float]
    first: datetime | None
    last: datetime | None

    def describe(self) -> str:
        """A few human-readable lines."""
        shares = ", ".join(
            f"scenario {scenario} {share:.1%}" for scenario, share in self.scenario_shares.items()
        )
        period = f"{self.first} .. {self.last}" if self.first is not None else "(empty)"
        return "\n".join(
            (
                f"transactions: {self.transactions:,}",
                f"frauds:       {self.frauds:,} ({self.fraud_rate:.3%})"
                + (f" - {shares}" if shares else ""),
                f"period:       {period}",
            )
        )


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))


def customer_profiles(customers: int, seed: int) -> pd.DataFrame:
    """The customer table: CUSTOMER_ID, x, y, mean_amount, std_amount, mean_nb_tx_per_day.

    Customer i's row depends only on `seed` and i, so a longer table extends a shorter one:
    the identity of a customer is stable across runs of any size.
    """
    if not _is_int(customers) or customers < 0:
        raise ValueError(f"customers must be an integer >= 0, got {customers!r}")
    # One row of draws per customer keeps every customer's values independent of the count.
    draws = _rng(seed, _STREAM_CUSTOMERS).random((customers, 4))
    low_amount, high_amount = MEAN_AMOUNT_RANGE
    low_rate, high_rate = MEAN_TRANSACTIONS_PER_DAY_RANGE
    mean_amount = low_amount + (high_amount - low_amount) * draws[:, 2]
    return pd.DataFrame(
        {
            "CUSTOMER_ID": np.arange(customers, dtype=np.int64),
            "x": GRID_SIZE * draws[:, 0],
            "y": GRID_SIZE * draws[:, 1],
            "mean_amount": mean_amount,
            "std_amount": mean_amount / 2,
            "mean_nb_tx_per_day": low_rate + (high_rate - low_rate) * draws[:, 3],
        },
        columns=list(CUSTOMER_COLUMNS),
    )


def terminal_profiles(terminals: int, seed: int) -> pd.DataFrame:
    """The terminal table: TERMINAL_ID, x, y; terminal i's row depends only on `seed` and i."""
    if not _is_int(terminals) or terminals < 0:
        raise ValueError(f"terminals must be an integer >= 0, got {terminals!r}")
    draws = _rng(seed, _STREAM_TERMINALS).random((terminals, 2))
    return pd.DataFrame(
        {
            "TERMINAL_ID": np.arange(terminals, dtype=np.int64),
            "x": GRID_SIZE * draws[:, 0],
            "y": GRID_SIZE * draws[:, 1],
        },
        columns=list(TERMINAL_COLUMNS),
    )


def terminals_within_radius(
    customers: pd.DataFrame, terminals: pd.DataFrame, radius: float
) -> CustomerTerminals:
    """For each customer (in table order), the terminals at distance strictly below `radius`."""
    customer_x = customers["x"].to_numpy(dtype=np.float64)
    customer_y = customers["y"].to_numpy(dtype=np.float64)
    terminal_x = terminals["x"].to_numpy(dtype=np.float64)
    terminal_y = terminals["y"].to_numpy(dtype=np.float64)
    terminal_ids = terminals["TERMINAL_ID"].to_numpy(dtype=np.int64)
    block = max(1, _DISTANCE_BLOCK_CELLS // max(1, len(terminal_x)))
    counts: list[npt.NDArray[np.int64]] = []
    linked: list[npt.NDArray[np.int64]] = []
    for start in range(0, len(customer_x), block):
        stop = start + block
        dx = customer_x[start:stop, None] - terminal_x[None, :]
        dy = customer_y[start:stop, None] - terminal_y[None, :]
        # The handbook's arithmetic: sqrt of the summed squares, compared strictly.
        rows, columns = np.nonzero(np.sqrt(dx * dx + dy * dy) < radius)
        counts.append(np.bincount(rows, minlength=len(dx)).astype(np.int64))
        linked.append(terminal_ids[columns])
    per_customer = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(customer_x) + 1, dtype=np.int64)
    np.cumsum(per_customer, out=offsets[1:])
    flat = np.concatenate(linked) if linked else np.zeros(0, dtype=np.int64)
    return CustomerTerminals(offsets=offsets, terminal_ids=flat)


def times_of_day(
    draws: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Seconds into the day of normal draws, and which the handbook keeps (0 < t < 86400).

    int() truncates toward zero, as the handbook's int(np.random.normal(...)) does, so draws
    in (-1, 1) give 0 and are dropped.
    """
    seconds = np.trunc(draws).astype(np.int64)
    return seconds, (seconds > 0) & (seconds < SECONDS_PER_DAY)


def generate_transactions(
    customers: pd.DataFrame,
    customer_terminals: CustomerTerminals,
    *,
    days: int,
    start_date: date,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Unlabelled transactions (no TX_FRAUD columns), sorted by time and numbered in that order."""
    customer_ids = customers["CUSTOMER_ID"].to_numpy(dtype=np.int64)
    rate = customers["mean_nb_tx_per_day"].to_numpy(dtype=np.float64)
    mean = customers["mean_amount"].to_numpy(dtype=np.float64)
    std = customers["std_amount"].to_numpy(dtype=np.float64)

    # Attempts in customer-major, day-minor order: the handbook's order before its time sort.
    attempts = rng.poisson(rate[:, None], size=(len(customer_ids), days)).ravel()
    row = np.repeat(np.repeat(np.arange(len(customer_ids)), days), attempts)
    day = np.repeat(np.tile(np.arange(days, dtype=np.int64), len(customer_ids)), attempts)

    time_of_day, usable = times_of_day(
        rng.normal(TIME_OF_DAY_MEAN_SECONDS, TIME_OF_DAY_STD_SECONDS, size=len(row))
    )
    usable &= customer_terminals.counts[row] > 0
    row, day, time_of_day = row[usable], day[usable], time_of_day[usable]

    amount = rng.normal(mean[row], std[row])
    negative = amount < 0
    amount[negative] = rng.uniform(0.0, 2.0 * mean[row[negative]])
    cents = np.rint(amount * 100.0).astype(np.int64)

    pick = rng.integers(0, customer_terminals.counts[row])
    terminal = customer_terminals.terminal_ids[customer_terminals.offsets[row] + pick]

    seconds = day * SECONDS_PER_DAY + time_of_day
    order = np.argsort(seconds, kind="stable")
    seconds, day = seconds[order], day[order]
    origin = np.datetime64(start_date, "ns")
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(len(order), dtype=np.int64),
            "TX_DATETIME": origin + seconds.astype("timedelta64[s]"),
            "CUSTOMER_ID": customer_ids[row[order]],
            "TERMINAL_ID": terminal[order],
            "TX_AMOUNT": cents[order] / 100.0,
            "TX_TIME_SECONDS": seconds,
            "TX_TIME_DAYS": day,
        }
    )


def compromise_days(transactions: pd.DataFrame) -> int:
    """Number of days on which the handbook compromises terminals and customers: max day seen."""
    if transactions.empty:
        return 0
    return int(transactions["TX_TIME_DAYS"].max())


def draw_fraud_plan(
    customer_ids: npt.ArrayLike,
    terminal_ids: npt.ArrayLike,
    *,
    days: int,
    rng: np.random.Generator,
) -> FraudPlan:
    """Each day, 2 distinct terminals and 3 distinct customers drawn uniformly at random."""
    customers = np.asarray(customer_ids, dtype=np.int64)
    terminals = np.asarray(terminal_ids, dtype=np.int64)
    if len(terminals) < TERMINALS_COMPROMISED_PER_DAY:
        raise ValueError(f"need at least {TERMINALS_COMPROMISED_PER_DAY} terminals")
    if len(customers) < CUSTOMERS_COMPROMISED_PER_DAY:
        raise ValueError(f"need at least {CUSTOMERS_COMPROMISED_PER_DAY} customers")
    compromised_terminals = np.zeros((days, TERMINALS_COMPROMISED_PER_DAY), dtype=np.int64)
    compromised_customers = np.zeros((days, CUSTOMERS_COMPROMISED_PER_DAY), dtype=np.int64)
    # The handbook draws all terminal days, then all customer days.
    for day in range(days):
        compromised_terminals[day] = rng.choice(
            terminals, size=TERMINALS_COMPROMISED_PER_DAY, replace=False
        )
    for day in range(days):
        compromised_customers[day] = rng.choice(
            customers, size=CUSTOMERS_COMPROMISED_PER_DAY, replace=False
        )
    return FraudPlan(
        compromised_terminals=compromised_terminals,
        compromised_customers=compromised_customers,
    )


def inject_frauds(
    transactions: pd.DataFrame, plan: FraudPlan, rng: np.random.Generator
) -> pd.DataFrame:
    """A copy of `transactions` labelled by the three scenarios, in order, each overriding.

    Needs TX_AMOUNT, TX_TIME_DAYS, TERMINAL_ID and CUSTOMER_ID; sets TX_FRAUD and
    TX_FRAUD_SCENARIO and multiplies the scenario-3 amounts. Scenario 3 chooses among a day's
    candidates in frame order, so the result depends on the frame's row order.
    """
    needed = ("TX_AMOUNT", "TX_TIME_DAYS", "TERMINAL_ID", "CUSTOMER_ID")
    missing = [name for name in needed if name not in transactions.columns]
    if missing:
        raise ValueError(f"transactions lack column(s) {', '.join(missing)}")
    cents = amount_minor(transactions["TX_AMOUNT"])
    days = transactions["TX_TIME_DAYS"].to_numpy(dtype=np.int64)
    if days.size and days.min() < 0:
        raise ValueError("TX_TIME_DAYS must not be negative")
    terminals = transactions["TERMINAL_ID"].to_numpy(dtype=np.int64)
    customers = transactions["CUSTOMER_ID"].to_numpy(dtype=np.int64)
    scenario = np.zeros(len(transactions), dtype=np.int64)

    scenario[cents > HIGH_AMOUNT_THRESHOLD_MINOR] = FraudScenario.HIGH_AMOUNT

    terminal_hit = _inside_compromise_windows(
        terminals, days, plan.compromised_terminals, TERMINAL_COMPROMISE_DAYS
    )
    scenario[terminal_hit] = FraudScenario.COMPROMISED_TERMINAL

    # Sequential per day, like the handbook: a transaction may be chosen (and multiplied) twice.
    for chosen in _customer_compromise_choices(customers, days, plan, rng):
        cents[chosen] *= CUSTOMER_FRAUD_AMOUNT_FACTOR
        scenario[chosen] = FraudScenario.COMPROMISED_CUSTOMER

    labelled = transactions.copy()
    labelled["TX_AMOUNT"] = cents / 100.0
    labelled["TX_FRAUD"] = (scenario != FraudScenario.GENUINE).astype(np.int64)
    labelled["TX_FRAUD_SCENARIO"] = scenario
    return labelled


def _inside_compromise_windows(
    ids: npt.NDArray[np.int64],
    days: npt.NDArray[np.int64],
    compromised: npt.NDArray[np.int64],
    window_days: int,
) -> npt.NDArray[np.bool_]:
    """True where the row's id was compromised on a day in (row's day - window, row's day]."""
    if ids.size == 0 or compromised.size == 0:
        return np.zeros(ids.size, dtype=np.bool_)
    codes, code_of_row = np.unique(ids, return_inverse=True)
    span = int(days.max()) + 1
    started = np.zeros((len(codes), span), dtype=np.int64)
    for day in range(min(len(compromised), span)):
        wanted = compromised[day]
        position = np.searchsorted(codes, wanted)
        present = position < len(codes)
        present[present] = codes[position[present]] == wanted[present]
        started[position[present], day] = 1
    # Starts in the last `window_days` days = running count now - running count a window ago.
    running = np.cumsum(started, axis=1)
    active = running.copy()
    if window_days < span:
        active[:, window_days:] -= running[:, :-window_days]
    return active[code_of_row, days] > 0


def _customer_compromise_choices(
    customers: npt.NDArray[np.int64],
    days: npt.NDArray[np.int64],
    plan: FraudPlan,
    rng: np.random.Generator,
) -> list[npt.NDArray[np.int64]]:
    """Per compromise day, the rows chosen for scenario 3: int(n / 3) of the n candidates.

    Candidates depend only on customers and days, never on amounts or labels, so choosing all
    days first and applying them in day order equals the handbook's day-by-day loop.
    """
    if customers.size == 0:
        return []
    codes, code_of_row = np.unique(customers, return_inverse=True)
    span = int(days.max()) + 1
    keys = code_of_row.astype(np.int64) * span + days
    # Rows grouped by (customer, day), frame order kept within a group.
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    choices: list[npt.NDArray[np.int64]] = []
    for day in range(plan.days):
        wanted = plan.compromised_customers[day]
        position = np.searchsorted(codes, wanted)
        present = position < len(codes)
        present[present] = codes[position[present]] == wanted[present]
        parts = []
        for code in position[present]:
            first_day = min(day, span)
            end_day = min(day + CUSTOMER_COMPROMISE_DAYS, span)
            low = np.searchsorted(sorted_keys, code * span + first_day, side="left")
            high = np.searchsorted(sorted_keys, code * span + end_day, side="left")
            parts.append(order[low:high])
        candidates = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        count = len(candidates) // CUSTOMER_FRAUD_SHARE_DIVISOR
        chosen = rng.choice(candidates, size=count, replace=False) if count else candidates[:0]
        choices.append(chosen.astype(np.int64))
    return choices


def run_simulation(config: SimulationConfig) -> SimulationResult:
    """Profiles, terminal links, transactions and fraud labels of one seeded run."""
    customers = customer_profiles(config.customers, config.seed)
    terminals = terminal_profiles(config.terminals, config.seed)
    links = terminals_within_radius(customers, terminals, config.radius)
    unlabelled = generate_transactions(
        customers,
        links,
        days=config.days,
        start_date=config.start_date,
        rng=_rng(config.seed, _STREAM_TRANSACTIONS),
    )
    plan = draw_fraud_plan(
        customers["CUSTOMER_ID"],
        terminals["TERMINAL_ID"],
        days=compromise_days(unlabelled),
        rng=_rng(config.seed, _STREAM_FRAUD_PLAN),
    )
    labelled = inject_frauds(unlabelled, plan, _rng(config.seed, _STREAM_FRAUD_SELECTION))
    return SimulationResult(
        config=config,
        customers=customers,
        terminals=terminals,
        customer_terminals=links,
        fraud_plan=plan,
        transactions=labelled[list(TRANSACTION_COLUMNS)],
    )


def simulate(config: SimulationConfig) -> pd.DataFrame:
    """The labelled transaction frame of the handbook's simulator, columns TRANSACTION_COLUMNS."""
    return run_simulation(config).transactions


def summarize(df: pd.DataFrame) -> SimulationSummary:
    """Counts, fraud rate, per-scenario shares of the frauds and the covered period."""
    if "TX_FRAUD" not in df.columns:
        raise ValueError("summarize needs labelled transactions: the TX_FRAUD column is missing")
    fraud = df["TX_FRAUD"].to_numpy(dtype=np.int64)
    frauds = int(fraud.sum())
    shares: dict[int, float] = {}
    if "TX_FRAUD_SCENARIO" in df.columns:
        scenario = df["TX_FRAUD_SCENARIO"].to_numpy(dtype=np.int64)
        for code in (
            FraudScenario.HIGH_AMOUNT,
            FraudScenario.COMPROMISED_TERMINAL,
            FraudScenario.COMPROMISED_CUSTOMER,
        ):
            shares[int(code)] = int((scenario == code).sum()) / frauds if frauds else 0.0
    first: datetime | None = None
    last: datetime | None = None
    if not df.empty:
        first = pd.Timestamp(df["TX_DATETIME"].min()).to_pydatetime()
        last = pd.Timestamp(df["TX_DATETIME"].max()).to_pydatetime()
    return SimulationSummary(
        transactions=len(df),
        frauds=frauds,
        fraud_rate=frauds / len(df) if len(df) else 0.0,
        scenario_shares=shares,
        first=first,
        last=last,
    )
