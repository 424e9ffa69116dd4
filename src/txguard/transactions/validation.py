"""Field rules of `CreateTransactionRequest`: every violated field is reported, not just the first.

A violation's description is fixed text chosen per rule. It never echoes the value sent, so an
error can never carry a card number (or anything else a client put in the wrong field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from txguard.schema.currencies import TRANSACTION_CURRENCIES
from txguard.schema.luhn import luhn_valid
from txguard.schema.v1.service_pb2 import CreateTransactionRequest
from txguard.schema.v1.transaction_pb2 import Channel
from txguard.transactions.card import is_card_number_shape

MAX_IDEMPOTENCY_KEY_CHARS: Final = 255
MAX_ID_CHARS: Final = 128
MAX_AMOUNT_MINOR: Final = 10**15
# occurred_at may be slightly ahead of our clock (client clocks drift), never far ahead.
MAX_FUTURE_SKEW_US: Final = 5 * 60 * 1_000_000
# 2000-01-01T00:00:00Z: older event times are bugs (an unset clock, seconds vs millis), not history.
EARLIEST_OCCURRED_AT_SECONDS: Final = 946_684_800
_MAX_NANOS: Final = 999_999_999

_CHANNELS: Final = frozenset(Channel.values())


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One broken rule: `field` is the request field name, `description` fixed text."""

    field: str
    description: str


def _identifier_rule(field: str, *, required: bool) -> FieldViolation:
    prefix = f"{field} is required" if required else f"{field}, when given, must be"
    verb = ": " if required else " "
    return FieldViolation(
        field, f"{prefix}{verb}1-{MAX_ID_CHARS} printable characters, not only whitespace"
    )


IDEMPOTENCY_KEY: Final = FieldViolation(
    "idempotency_key",
    f"idempotency_key is required: 1-{MAX_IDEMPOTENCY_KEY_CHARS} characters, one per transaction",
)
ACCOUNT_ID: Final = _identifier_rule("account_id", required=True)
AMOUNT_MINOR: Final = FieldViolation(
    "amount_minor", "amount_minor must be a whole number of minor units from 1 to 10^15"
)
CURRENCY: Final = FieldViolation(
    "currency", "currency must be an active ISO 4217 alphabetic code with minor units, e.g. EUR"
)
TERMINAL_ID: Final = _identifier_rule("terminal_id", required=True)
CARD_NUMBER: Final = FieldViolation(
    "card_number", "card_number must be 12-19 digits and pass the Luhn check"
)
OCCURRED_AT_MALFORMED: Final = FieldViolation(
    "occurred_at", "occurred_at must be a valid timestamp: nanos from 0 to 999999999"
)
OCCURRED_AT_RANGE: Final = FieldViolation(
    "occurred_at",
    "occurred_at, when given, must be from 2000-01-01T00:00:00Z to at most 5 minutes after now",
)
MERCHANT_ID: Final = _identifier_rule("merchant_id", required=False)
CHANNEL: Final = FieldViolation("channel", "channel must be one of the defined Channel values")
COUNTRY: Final = FieldViolation(
    "country", "country, when given, must be an ISO 3166-1 alpha-2 code: two letters A-Z"
)
DEVICE_ID: Final = _identifier_rule("device_id", required=False)


def _valid_identifier(value: str) -> bool:
    return len(value) <= MAX_ID_CHARS and value.isprintable() and not value.isspace()


def _valid_country(value: str) -> bool:
    return len(value) == 2 and value.isascii() and value.isalpha() and value.isupper()


def validate_create_request(request: CreateTransactionRequest, now_us: int) -> list[FieldViolation]:
    """All field violations of `request` (empty when valid); `now_us` bounds occurred_at."""
    violations: list[FieldViolation] = []
    key = request.idempotency_key
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        violations.append(IDEMPOTENCY_KEY)
    account_id = request.account_id
    if not account_id or not _valid_identifier(account_id):
        violations.append(ACCOUNT_ID)
    if not 0 < request.amount_minor <= MAX_AMOUNT_MINOR:
        violations.append(AMOUNT_MINOR)
    if request.currency not in TRANSACTION_CURRENCIES:
        violations.append(CURRENCY)
    terminal_id = request.terminal_id
    if not terminal_id or not _valid_identifier(terminal_id):
        violations.append(TERMINAL_ID)
    pan = request.card_number
    if not is_card_number_shape(pan) or not luhn_valid(pan):
        violations.append(CARD_NUMBER)
    if request.HasField("occurred_at"):
        occurred = request.occurred_at
        nanos = occurred.nanos
        if not 0 <= nanos <= _MAX_NANOS:
            violations.append(OCCURRED_AT_MALFORMED)
        elif occurred.seconds < EARLIEST_OCCURRED_AT_SECONDS or (
            occurred.seconds * 1_000_000 + nanos // 1000 > now_us + MAX_FUTURE_SKEW_US
        ):
            violations.append(OCCURRED_AT_RANGE)
    merchant_id = request.merchant_id
    if merchant_id and not _valid_identifier(merchant_id):
        violations.append(MERCHANT_ID)
    if request.channel not in _CHANNELS:
        violations.append(CHANNEL)
    country = request.country
    if country and not _valid_country(country):
        violations.append(COUNTRY)
    device_id = request.device_id
    if device_id and not _valid_identifier(device_id):
        violations.append(DEVICE_ID)
    return violations
