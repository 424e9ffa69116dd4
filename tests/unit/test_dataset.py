"""Reading and writing datasets in the handbook's column layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from txguard.simulate.dataset import (
    HANDBOOK_COLUMNS,
    REQUIRED_COLUMNS,
    DatasetError,
    amount_minor,
    read_dataset,
    write_dataset,
)
from txguard.simulate.handbook import SimulationConfig, simulate

FORMATS = (".csv", ".parquet")

HEADER = "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD,TX_FRAUD_SCENARIO"
GOOD_ROWS = (
    "0,2018-04-01 00:00:31,596,3156,57.16,0,0",
    "1,2018-04-01 00:02:10,4961,3412,81.51,1,2",
    "2,2018-04-01 00:07:56,2,1365,146.00,0,0",
)


def _csv(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "transactions.csv"
    path.write_text("\n".join((header, *rows)) + "\n")
    return path


def _replace(rows: tuple[str, ...], index: int, column: str, value: str) -> tuple[str, ...]:
    """`rows` with one cell of row `index` replaced."""
    position = HEADER.split(",").index(column)
    cells = rows[index].split(",")
    cells[position] = value
    return (*rows[:index], ",".join(cells), *rows[index + 1 :])


def _frame(**overrides: object) -> pd.DataFrame:
    columns: dict[str, object] = {
        "TRANSACTION_ID": np.array([0, 1, 2], dtype=np.int64),
        "TX_DATETIME": pd.to_datetime(
            ["2018-04-01 00:00:31", "2018-04-01 00:02:10", "2018-04-02 23:59:59"]
        ).astype("datetime64[ns]"),
        "CUSTOMER_ID": np.array([596, 4961, 2], dtype=np.int64),
        "TERMINAL_ID": np.array([3156, 3412, 1365], dtype=np.int64),
        "TX_AMOUNT": np.array([57.16, 0.29, 1_234_567.89]),
        "TX_FRAUD": np.array([0, 1, 1], dtype=np.int64),
        "TX_FRAUD_SCENARIO": np.array([0, 3, 1], dtype=np.int64),
    }
    columns.update(overrides)
    return pd.DataFrame(columns)


@pytest.fixture(scope="module")
def simulated() -> pd.DataFrame:
    return simulate(SimulationConfig(customers=60, terminals=120, days=20, radius=12.0, seed=1))


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_preserves_every_column_exactly(
    tmp_path: Path, simulated: pd.DataFrame, suffix: str
) -> None:
    path = tmp_path / f"data{suffix}"
    write_dataset(simulated, path)
    back = read_dataset(path)
    expected = simulated[list(HANDBOOK_COLUMNS)]
    pd.testing.assert_frame_equal(back, expected, check_exact=True)
    assert back["TX_DATETIME"].dtype == np.dtype("datetime64[ns]")
    assert (amount_minor(back["TX_AMOUNT"]) == amount_minor(expected["TX_AMOUNT"])).all()


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_of_awkward_amounts(tmp_path: Path, suffix: str) -> None:
    amounts = np.array([0.29, 0.1 + 0.2, 1e-2, 0.0, 1_234_567.89])
    frame = pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(5, dtype=np.int64),
            "TX_DATETIME": pd.date_range("2018-04-01", periods=5, freq="s").astype(
                "datetime64[ns]"
            ),
            "CUSTOMER_ID": np.zeros(5, dtype=np.int64),
            "TERMINAL_ID": np.zeros(5, dtype=np.int64),
            "TX_AMOUNT": amounts,
        }
    )
    path = tmp_path / f"data{suffix}"
    write_dataset(frame, path)
    back = read_dataset(path)
    # Bit-for-bit, including 0.1 + 0.2 which is not 0.3.
    assert back["TX_AMOUNT"].to_numpy().tobytes() == amounts.tobytes()
    assert list(back.columns) == list(REQUIRED_COLUMNS)


def test_csv_holds_the_handbooks_timestamp_text(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    write_dataset(_frame(), path)
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER
    assert lines[1] == "0,2018-04-01 00:00:31,596,3156,57.16,0,0"


def test_only_the_handbook_columns_are_written(tmp_path: Path, simulated: pd.DataFrame) -> None:
    path = tmp_path / "data.csv"
    write_dataset(simulated.assign(NOTE="x"), path)
    assert path.read_text().splitlines()[0] == HEADER
    assert "TX_TIME_SECONDS" in simulated.columns


@pytest.mark.parametrize("suffix", FORMATS)
def test_labels_are_optional(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    write_dataset(_frame().drop(columns=["TX_FRAUD", "TX_FRAUD_SCENARIO"]), path)
    back = read_dataset(path)
    assert list(back.columns) == list(REQUIRED_COLUMNS)


def test_reading_keeps_extra_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path, *(row + ",kiosk" for row in GOOD_ROWS), header=HEADER + ",MERCHANT")
    back = read_dataset(path)
    assert list(back.columns) == [*HANDBOOK_COLUMNS, "MERCHANT"]
    assert back["MERCHANT"].tolist() == ["kiosk"] * 3


def test_reading_sorts_stably_by_time_then_id(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "7,2018-04-02 10:00:00,1,1,1.00,0,0",
        "5,2018-04-01 10:00:00,1,1,2.00,0,0",
        "9,2018-04-01 10:00:00,1,1,3.00,0,0",
        "3,2018-04-01 10:00:00,1,1,4.00,0,0",
    )
    back = read_dataset(path)
    assert back["TRANSACTION_ID"].tolist() == [3, 5, 9, 7]
    assert back.index.tolist() == [0, 1, 2, 3]


def test_reading_types(tmp_path: Path) -> None:
    back = read_dataset(_csv(tmp_path, *GOOD_ROWS))
    assert back["TX_DATETIME"].dtype == np.dtype("datetime64[ns]")
    assert back["TX_AMOUNT"].dtype == np.dtype("float64")
    for column in ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID", "TX_FRAUD", "TX_FRAUD_SCENARIO"):
        assert back[column].dtype == np.dtype("int64"), column
    assert back["TX_AMOUNT"].tolist() == [57.16, 81.51, 146.0]


def test_timestamps_with_an_offset_become_utc(tmp_path: Path) -> None:
    rows = _replace(GOOD_ROWS, 0, "TX_DATETIME", "2018-04-01T02:00:31+02:00")
    back = read_dataset(_csv(tmp_path, *rows))
    assert back["TX_DATETIME"].iloc[0] == pd.Timestamp("2018-04-01 00:00:31")


def test_zoned_parquet_timestamps_become_naive_utc(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    frame = _frame()
    frame["TX_DATETIME"] = frame["TX_DATETIME"].dt.tz_localize("UTC").dt.tz_convert("Europe/Paris")
    frame.to_parquet(path, index=False)
    back = read_dataset(path)
    pd.testing.assert_series_equal(back["TX_DATETIME"], _frame()["TX_DATETIME"])


def test_parquet_keeps_fractions_of_a_second(tmp_path: Path) -> None:
    stamps = pd.to_datetime(
        ["2018-04-01 00:00:00.250", "2018-04-01 00:00:01", "2018-04-02"], format="ISO8601"
    )
    frame = _frame(TX_DATETIME=stamps.astype("datetime64[ns]"))
    path = tmp_path / "data.parquet"
    write_dataset(frame, path)
    pd.testing.assert_frame_equal(read_dataset(path), frame, check_exact=True)


def test_large_ids_survive_exactly(tmp_path: Path) -> None:
    big = 2**62 + 1
    rows = _replace(GOOD_ROWS, 0, "TRANSACTION_ID", str(big))
    back = read_dataset(_csv(tmp_path, *rows))
    assert int(back["TRANSACTION_ID"].max()) == big


def test_amount_minor_is_exact_cents() -> None:
    amounts = pd.Series([0.29, 0.57, 1.1, 4.35, 0.1 + 0.2, 1_234_567.89, 0.0])
    cents = amount_minor(amounts)
    assert cents.dtype == np.dtype("int64")
    assert cents.tolist() == [29, 57, 110, 435, 30, 123_456_789, 0]
    # The naive conversion truncates some of them.
    assert (amounts * 100).astype(np.int64).tolist() != cents.tolist()
    with pytest.raises(ValueError, match="position 1 is not a finite number"):
        amount_minor([1.0, float("nan")])


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["data.json", "data", "data.csv.gz"])
def test_unsupported_suffix(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(DatasetError, match=r"unsupported file suffix .*use \.csv or \.parquet"):
        write_dataset(_frame(), path)
    with pytest.raises(DatasetError, match=r"use \.csv or \.parquet"):
        read_dataset(path)
    assert not path.exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "absent.csv")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DatasetError, match="is empty"):
        read_dataset(path)


def test_header_only_file_is_an_empty_dataset(tmp_path: Path) -> None:
    back = read_dataset(_csv(tmp_path))
    assert back.empty and list(back.columns) == list(HANDBOOK_COLUMNS)
    assert back["TX_DATETIME"].dtype == np.dtype("datetime64[ns]")


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DatasetError, match=r"cannot read .* as Parquet"):
        read_dataset(path)


def test_missing_columns_are_listed_with_what_was_found(tmp_path: Path) -> None:
    path = _csv(
        tmp_path, "0,2018-04-01 00:00:31,596,57.16", header="ID,TX_DATETIME,CUSTOMER,AMOUNT"
    )
    with pytest.raises(DatasetError) as error:
        read_dataset(path)
    message = str(error.value)
    assert (
        "missing required column(s) TRANSACTION_ID, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT;" in message
    )
    assert "found: ID, TX_DATETIME, CUSTOMER, AMOUNT" in message


@pytest.mark.parametrize(
    ("row", "column", "value", "expected"),
    [
        (1, "TX_DATETIME", "not-a-date", "TX_DATETIME at row 1 (line 3) is 'not-a-date'"),
        (2, "TX_DATETIME", "2018-13-01 00:00:00", "TX_DATETIME at row 2 (line 4)"),
        (0, "TX_DATETIME", "", "TX_DATETIME at row 0 (line 2) is empty"),
        (2, "TX_AMOUNT", "-0.01", "TX_AMOUNT at row 2 (line 4) is -0.01; amounts must not be"),
        (1, "TX_AMOUNT", "abc", "TX_AMOUNT at row 1 (line 3) is 'abc'; expected a number"),
        (0, "TX_AMOUNT", "", "TX_AMOUNT at row 0 (line 2) is empty"),
        (1, "TX_AMOUNT", "inf", "TX_AMOUNT at row 1 (line 3)"),
        (1, "TRANSACTION_ID", "1.5", "TRANSACTION_ID at row 1 (line 3) is 1.5; expected a non-neg"),
        (2, "CUSTOMER_ID", "-4", "CUSTOMER_ID at row 2 (line 4) is -4; expected a non-negative"),
        (0, "TERMINAL_ID", "T-12", "TERMINAL_ID at row 0 (line 2) is 'T-12'"),
        (2, "TX_FRAUD", "2", "TX_FRAUD at row 2 (line 4) is 2; expected one of 0, 1"),
        (0, "TX_FRAUD", "yes", "TX_FRAUD at row 0 (line 2) is 'yes'"),
        (1, "TX_FRAUD_SCENARIO", "4", "TX_FRAUD_SCENARIO at row 1 (line 3) is 4; expected one of"),
    ],
)
def test_bad_values_name_the_column_and_the_first_bad_row(
    tmp_path: Path, row: int, column: str, value: str, expected: str
) -> None:
    rows = _replace(GOOD_ROWS, row, column, value)
    if row < 2:
        # A second bad row after the first: the message must name the first.
        rows = _replace(rows, 2, column, value)
    with pytest.raises(DatasetError) as error:
        read_dataset(_csv(tmp_path, *rows))
    assert str(error.value).startswith(f"{tmp_path / 'transactions.csv'}: {expected}")


def test_label_and_scenario_must_agree(tmp_path: Path) -> None:
    rows = _replace(GOOD_ROWS, 2, "TX_FRAUD_SCENARIO", "1")
    with pytest.raises(DatasetError, match=r"TX_FRAUD_SCENARIO at row 2 \(line 4\) is 1 but TX_FR"):
        read_dataset(_csv(tmp_path, *rows))


def test_duplicate_transaction_ids_name_both_rows(tmp_path: Path) -> None:
    rows = _replace(GOOD_ROWS, 2, "TRANSACTION_ID", "0")
    with pytest.raises(DatasetError) as error:
        read_dataset(_csv(tmp_path, *rows))
    assert "TRANSACTION_ID 0 at row 2 (line 4) repeats the one at row 0 (line 2)" in str(
        error.value
    )


def test_parquet_errors_name_the_row_without_a_line(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    _frame(TX_AMOUNT=np.array([1.0, 2.0, -3.0])).to_parquet(path, index=False)
    with pytest.raises(DatasetError, match=r"TX_AMOUNT at row 2 is -3\.0;"):
        read_dataset(path)


def test_numeric_timestamps_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    _frame(TX_DATETIME=np.array([1, 2, 3], dtype=np.int64)).to_parquet(path, index=False)
    with pytest.raises(DatasetError, match="TX_DATETIME has numeric type int64"):
        read_dataset(path)


def test_an_invalid_frame_is_never_written(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    with pytest.raises(DatasetError, match="TX_FRAUD at row 1 is 7"):
        write_dataset(_frame(TX_FRAUD=np.array([0, 7, 1])), path)
    with pytest.raises(DatasetError, match="missing required column"):
        write_dataset(_frame().drop(columns="TERMINAL_ID"), path)
    assert list(tmp_path.iterdir()) == []


def test_csv_refuses_fractions_of_a_second(tmp_path: Path) -> None:
    stamps = pd.to_datetime(
        ["2018-04-01 00:00:00", "2018-04-01 00:00:01.5", "2018-04-02"], format="ISO8601"
    )
    path = tmp_path / "data.csv"
    with pytest.raises(DatasetError, match=r"TX_DATETIME at row 1 .* write \.parquet instead"):
        write_dataset(_frame(TX_DATETIME=stamps.astype("datetime64[ns]")), path)
    assert list(tmp_path.iterdir()) == []


def test_writing_into_a_missing_directory_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "data.parquet"
    with pytest.raises(DatasetError, match="cannot write"):
        write_dataset(_frame(), path)
    assert list(tmp_path.iterdir()) == []


def test_writing_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("old content\n")
    write_dataset(_frame(), path)
    assert len(read_dataset(path)) == 3
    assert [entry.name for entry in tmp_path.iterdir()] == ["data.csv"]
