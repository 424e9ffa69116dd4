"""The detector's per-record work in C (`_per_record.c`)."""

from collections.abc import Callable, Container, Sequence
from typing import Any, TypeVar

_Row = TypeVar("_Row")
_Record = TypeVar("_Record")
_Result = TypeVar("_Result")
_Account = TypeVar("_Account")

def decode_rows(
    records: Sequence[Any],
    fallback: Callable[[Any], _Row | None],
    row_type: type[_Row],
    event_header: str,
    schema_header: tuple[str, bytes],
    version_header: tuple[str, bytes],
) -> list[_Row]: ...
def encode_decisions(
    rows: Sequence[tuple[Any, ...]],
    results: Sequence[tuple[Any, ...]],
    outcomes: Sequence[int],
    decision_ids: Sequence[bytes],
    versions_and_time: bytes,
    shadow_version: bytes,
    topic: str,
    record_type: type[_Record],
    event_header: str,
    schema_headers: tuple[tuple[str, bytes], tuple[str, bytes]],
) -> list[_Record]: ...
def model_results(
    scores: list[float],
    shadow_scores: list[float] | None,
    width: int,
    columns: list[int],
    fractions: list[float],
    values: list[float],
    keep: list[bool],
    codes: list[str],
    labels: list[str],
    skip: Container[int],
    result_type: type[_Result],
    reason_type: type[Any],
) -> list[_Result | None]: ...
def event_id_hash(event_id: str) -> int: ...
def group_rows(rows: Sequence[tuple[Any, ...]]) -> list[tuple[int, str, list[int], list[int]]]: ...
def observe_accounts(
    rows: list[Any],
    partitions: dict[int, tuple[dict[str, Any], set[str]]],
    history_type: Callable[[str], Any],
    not_restored: Callable[[int], BaseException],
    account_type: type[_Account],
    times: list[int],
    amounts: list[int],
    offset_field: int,
    columnwise: bool,
    longest_ms: int,
    max_events: int,
    max_amount: int,
    max_time_ms: int,
) -> tuple[list[_Account], list[_Account]]: ...
def append_if_appendable(
    history: Any,
    indices: list[int],
    hashes: list[int],
    times: list[int],
    amounts: list[int],
    longest_ms: int,
    max_events: int,
    max_amount: int,
    max_time_ms: int,
) -> bool: ...
def customer_columns(
    accounts: list[Any],
    rows: list[Any],
    currency_field: int,
    scales: dict[str, float],
    values: Any,
    in_velocity: Any,
    row_out: Any,
    time_out: Any,
    columns: tuple[int, ...],
    windows_ms: tuple[int, ...],
    hour_ms: int,
    velocity_ms: int,
    history_ms: int,
    max_events: int,
) -> int: ...
def terminal_columns(
    terminal_ids: list[str],
    times_ms: Any,
    terminals: dict[str, Any],
    values: Any,
    rows: Any,
    columns: tuple[int, ...],
    windows_ms: tuple[int, ...],
    delay_ms: int,
) -> None: ...
