"""Transaction datasets in the handbook's column layout: the one place that reads and writes them.

A dataset is a CSV or Parquet file (chosen by suffix) with the columns of the "Reproducible
Machine Learning for Credit Card Fraud Detection" handbook. Amounts stay float64 in the frame, as
the handbook keeps them; `amount_minor` converts them to exact integer cents where money is
compared or summed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

HANDBOOK_COLUMNS: Final = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)
REQUIRED_COLUMNS: Final = HANDBOOK_COLUMNS[:5]
OPTIONAL_COLUMNS: Final = HANDBOOK_COLUMNS[5:]
SUPPORTED_SUFFIXES: Final = (".csv", ".parquet")

# The handbook's timestamp text; whole seconds, no zone (timestamps mean UTC).
CSV_DATETIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"

_ID_COLUMNS: Final = ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID")
# Scenario codes of the handbook: 0 genuine, 1 amount, 2 terminal, 3 customer.
_FRAUD_SCENARIOS: Final = frozenset({0, 1, 2, 3})

# Describes a row of the input for error messages: position -> "row 3 (line 5)".
_Where: TypeAlias = Callable[[int], str]


class DatasetError(ValueError):
    """A dataset file that cannot be read or written as asked; the message says what to fix."""


def amount_minor(amounts: pd.Series | npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Amounts in exact integer cents: round(amount * 100), so 0.29 gives 29, never 28."""
    values = np.asarray(amounts, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        first = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"amount at position {first} is not a finite number: {values[first]}")
    return np.rint(values * 100.0).astype(np.int64)


def write_dataset(df: pd.DataFrame, path: Path) -> None:
    """Write the handbook columns present in `df` to `path`, as CSV or Parquet by its suffix.

    The frame is checked like `read_dataset` checks a file, so an invalid dataset is never
    written. The file appears complete or not at all (written aside, then renamed).
    """
    path = Path(path)
    suffix = _format_of(path)
    checked = _checked(df, source=f"frame to write to {path}", line_offset=None)
    columns = [name for name in HANDBOOK_COLUMNS if name in checked.columns]
    frame = checked[columns]
    partial = path.with_name(f".{path.name}.partial")
    try:
        if suffix == ".csv":
            _reject_sub_second(frame["TX_DATETIME"], path)
            frame.to_csv(partial, index=False, date_format=CSV_DATETIME_FORMAT)
        else:
            frame.to_parquet(partial, index=False)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DatasetError(f"cannot write {path}: {exc}") from exc


def read_dataset(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet dataset, check it, and return it sorted by time then id.

    Returned types: ids and labels int64, TX_DATETIME datetime64[ns] (naive, meaning UTC),
    TX_AMOUNT float64. Extra columns are kept unchanged. The sort is stable on
    (TX_DATETIME, TRANSACTION_ID) and the index is reset.
    """
    path = Path(path)
    suffix = _format_of(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist or is not a file")
    try:
        if suffix == ".csv":
            raw = pd.read_csv(path)
        else:
            raw = pd.read_parquet(path)
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"{path} is empty: expected a header line with the columns") from exc
    except (OSError, ValueError) as exc:
        kind = "CSV" if suffix == ".csv" else "Parquet"
        raise DatasetError(f"cannot read {path} as {kind}: {exc}") from exc
    # CSV data rows start on line 2, after the header.
    checked = _checked(raw, source=str(path), line_offset=2 if suffix == ".csv" else None)
    ordered = checked.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    return ordered.reset_index(drop=True)


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        supported = " or ".join(SUPPORTED_SUFFIXES)
        raise DatasetError(
            f"{path}: unsupported file suffix {path.suffix or '(none)'!r}; use {supported}"
        )
    return suffix


def _checked(df: pd.DataFrame, *, source: str, line_offset: int | None) -> pd.DataFrame:
    """A copy of `df` with the handbook columns checked and converted to their types."""
    missing = [name for name in REQUIRED_COLUMNS if name not in df.columns]
    if missing:
        found = ", ".join(str(name) for name in df.columns) or "(no columns)"
        raise DatasetError(
            f"{source}: missing required column(s) {', '.join(missing)}; found: {found}"
        )
    out = df.copy()
    out = out.reset_index(drop=True)

    def where(position: int) -> str:
        if line_offset is None:
            return f"row {position}"
        return f"row {position} (line {position + line_offset})"

    for name in _ID_COLUMNS:
        out[name] = _integers(out[name], name, source, where, allowed=None)
    out["TX_DATETIME"] = _timestamps(out["TX_DATETIME"], source, where)
    out["TX_AMOUNT"] = _amounts(out["TX_AMOUNT"], source, where)
    if "TX_FRAUD" in out.columns:
        out["TX_FRAUD"] = _integers(out["TX_FRAUD"], "TX_FRAUD", source, where, allowed={0, 1})
    if "TX_FRAUD_SCENARIO" in out.columns:
        out["TX_FRAUD_SCENARIO"] = _integers(
            out["TX_FRAUD_SCENARIO"], "TX_FRAUD_SCENARIO", source, where, allowed=_FRAUD_SCENARIOS
        )
    if "TX_FRAUD" in out.columns and "TX_FRAUD_SCENARIO" in out.columns:
        labelled = out["TX_FRAUD"].to_numpy() == 1
        has_scenario = out["TX_FRAUD_SCENARIO"].to_numpy() != 0
        mismatch = np.flatnonzero(labelled != has_scenario)
        if mismatch.size:
            first = int(mismatch[0])
            raise DatasetError(
                f"{source}: TX_FRAUD_SCENARIO at {where(first)} is "
                f"{out['TX_FRAUD_SCENARIO'].iat[first]} but TX_FRAUD is "
                f"{out['TX_FRAUD'].iat[first]}; scenario 0 means genuine (TX_FRAUD 0), "
                "scenarios 1-3 mean fraud (TX_FRAUD 1)"
            )
    ids = out["TRANSACTION_ID"]
    duplicated = np.flatnonzero(ids.duplicated(keep="first").to_numpy())
    if duplicated.size:
        id_values = ids.to_numpy(dtype=np.int64)
        second = int(duplicated[0])
        value = int(id_values[second])
        first = int(np.flatnonzero(id_values == value)[0])
        raise DatasetError(
            f"{source}: TRANSACTION_ID {value} at {where(second)} repeats the one at "
            f"{where(first)}; transaction ids must be unique"
        )
    return out


def _first_bad(bad: npt.NDArray[np.bool_]) -> int | None:
    positions = np.flatnonzero(bad)
    return int(positions[0]) if positions.size else None


def _integers(
    column: pd.Series,
    name: str,
    source: str,
    where: _Where,
    *,
    allowed: set[int] | frozenset[int] | None,
) -> pd.Series:
    if pd.api.types.is_integer_dtype(column.dtype) and not column.isna().any():
        # Straight to int64: a detour through float64 would corrupt ids above 2**53.
        values = column.to_numpy(dtype=np.int64)
        bad = values < 0
    else:
        numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(numbers) | (numbers != np.floor(numbers)) | (numbers < 0)
        values = np.where(bad, 0, numbers).astype(np.int64)
    first = _first_bad(bad)
    if first is not None:
        raise DatasetError(
            f"{source}: {name} at {where(first)} is {_shown(column.iat[first])}; "
            "expected a non-negative integer"
        )
    if allowed is not None:
        first = _first_bad(~np.isin(values, sorted(allowed)))
        if first is not None:
            choices = ", ".join(str(value) for value in sorted(allowed))
            raise DatasetError(
                f"{source}: {name} at {where(first)} is {values[first]}; expected one of {choices}"
            )
    return pd.Series(values, index=column.index, name=name)


def _amounts(column: pd.Series, source: str, where: _Where) -> pd.Series:
    numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    first = _first_bad(~np.isfinite(numbers))
    if first is not None:
        raise DatasetError(
            f"{source}: TX_AMOUNT at {where(first)} is {_shown(column.iat[first])}; "
            "expected a number"
        )
    first = _first_bad(numbers < 0)
    if first is not None:
        raise DatasetError(
            f"{source}: TX_AMOUNT at {where(first)} is {numbers[first]}; "
            "amounts must not be negative"
        )
    return pd.Series(numbers, index=column.index, name="TX_AMOUNT")


def _timestamps(column: pd.Series, source: str, where: _Where) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        parsed = pd.to_datetime(column, utc=True)
    elif pd.api.types.is_numeric_dtype(column.dtype) and not column.isna().all():
        raise DatasetError(
            f"{source}: TX_DATETIME has numeric type {column.dtype}; expected timestamps "
            f"such as 2018-04-01 00:00:31"
        )
    else:
        # Text timestamps; an offset converts to UTC, no offset means UTC already.
        parsed = pd.to_datetime(column, format="ISO8601", utc=True, errors="coerce")
    first = _first_bad(parsed.isna().to_numpy())
    if first is not None:
        raise DatasetError(
            f"{source}: TX_DATETIME at {where(first)} is {_shown(column.iat[first])}; "
            "expected a timestamp such as 2018-04-01 00:00:31"
        )
    try:
        return parsed.dt.tz_localize(None).astype("datetime64[ns]")
    except (OverflowError, pd.errors.OutOfBoundsDatetime) as exc:
        raise DatasetError(
            f"{source}: TX_DATETIME holds a timestamp outside 1677-09-22..2262-04-11: {exc}"
        ) from exc


def _reject_sub_second(timestamps: pd.Series, path: Path) -> None:
    nanos = timestamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    first = _first_bad(nanos % 1_000_000_000 != 0)
    if first is not None:
        raise DatasetError(
            f"cannot write {path}: TX_DATETIME at row {first} ({timestamps.iat[first]}) has "
            "a fraction of a second, which the CSV layout drops; write .parquet instead"
        )


def _shown(value: object) -> str:
    """A cell as the user wrote it: 'abc' for text, 1.5 for numbers, empty for a missing cell."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
        return "empty"
    return repr(value)
