"""Card tokenization, the Luhn check and the token key."""

from __future__ import annotations

import hashlib
import hmac
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txguard.config import ConfigError, Settings
from txguard.schema.luhn import luhn_check_digit, luhn_valid
from txguard.transactions.card import (
    CardTokenizer,
    create_card_key_file,
    is_card_number_shape,
    load_card_key,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
PAN = "4111111111111111"


def test_token_is_hex_hmac_sha256_of_the_pan() -> None:
    card = CardTokenizer(KEY_A).tokenize(PAN)
    assert card.token == hmac.new(KEY_A, PAN.encode(), hashlib.sha256).hexdigest()
    assert len(card.token) == 64


@pytest.mark.parametrize("key_length", [32, 63, 64, 65, 100])
def test_token_matches_hmac_for_keys_around_the_block_size(key_length: int) -> None:
    key = bytes(i % 251 for i in range(key_length))
    expected = hmac.new(key, PAN.encode(), hashlib.sha256).hexdigest()
    assert CardTokenizer(key).tokenize(PAN).token == expected


@given(st.from_regex(r"\A[0-9]{12,19}\Z"))
def test_token_equals_stdlib_hmac_for_any_pan(pan: str) -> None:
    expected = hmac.new(KEY_A, pan.encode(), hashlib.sha256).hexdigest()
    assert CardTokenizer(KEY_A).tokenize(pan).token == expected


def test_token_is_stable_per_key_and_differs_across_keys() -> None:
    first = CardTokenizer(KEY_A).tokenize(PAN)
    again = CardTokenizer(KEY_A).tokenize(PAN)
    other_key = CardTokenizer(KEY_B).tokenize(PAN)
    other_card = CardTokenizer(KEY_A).tokenize("5555555555554444")
    assert first == again
    assert first.token != other_key.token
    assert first.token != other_card.token


def test_bin_and_last4() -> None:
    card = CardTokenizer(KEY_A).tokenize("378282246310005")
    assert card.bin == "378282"
    assert card.last4 == "0005"


def test_repr_shows_neither_key_nor_pan() -> None:
    tokenizer = CardTokenizer(KEY_A)
    card = tokenizer.tokenize(PAN)
    assert KEY_A.hex() not in repr(tokenizer)
    assert PAN not in repr(card)
    assert card.token not in repr(card)


def test_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        CardTokenizer(b"k" * 31)


@pytest.mark.parametrize(
    "pan", ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"]
)
def test_luhn_accepts_known_test_cards(pan: str) -> None:
    assert luhn_valid(pan)


@pytest.mark.parametrize("pan", ["4111111111111112", "5555555555554440", "79927398710"])
def test_luhn_rejects_wrong_check_digits(pan: str) -> None:
    assert not luhn_valid(pan)


@given(st.from_regex(r"\A[0-9]{11,18}\Z"), st.data())
def test_luhn_detects_every_single_digit_error(body: str, data: st.DataObject) -> None:
    pan = body + luhn_check_digit(body)
    assert luhn_valid(pan)
    position = data.draw(st.integers(0, len(pan) - 1))
    replacement = data.draw(st.sampled_from([d for d in "0123456789" if d != pan[position]]))
    assert not luhn_valid(pan[:position] + replacement + pan[position + 1 :])


@pytest.mark.parametrize(
    ("value", "shaped"),
    [
        ("1" * 11, False),
        ("1" * 12, True),
        ("1" * 19, True),
        ("1" * 20, False),
        ("4111 1111 1111 1111", False),
        ("٤١١١١١١١١١١١١١١١", False),  # Arabic-Indic digits: isdigit() but not ASCII
        ("", False),
    ],
)
def test_card_number_shape(value: str, shaped: bool) -> None:
    assert is_card_number_shape(value) is shaped


def _settings(home: Path, **env: str) -> Settings:
    return Settings.from_env({"TXGUARD_HOME": str(home), **env})


def test_key_from_settings_wins(tmp_path: Path) -> None:
    settings = _settings(tmp_path, TXGUARD_CARD_TOKEN_KEY=KEY_A.hex())
    create_card_key_file(settings.card_token_key_file)
    assert load_card_key(settings) == KEY_A


def test_created_key_file_is_private_hex_and_loads(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    key = create_card_key_file(settings.card_token_key_file)
    path = settings.card_token_key_file
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key.hex()
    assert load_card_key(settings) == key


def test_existing_key_file_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "card-token.key"
    key = create_card_key_file(path)
    with pytest.raises(FileExistsError):
        create_card_key_file(path)
    assert path.read_text().strip() == key.hex()


def test_missing_key_names_both_ways_to_provide_one(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(ConfigError) as raised:
        load_card_key(settings)
    message = str(raised.value)
    assert "TXGUARD_CARD_TOKEN_KEY" in message
    assert "TXGUARD_CARD_TOKEN_KEY_FILE" in message
    assert str(settings.card_token_key_file) in message


@pytest.mark.parametrize(("content", "problem"), [("not hex", "hex"), ("ab" * 31, "32 bytes")])
def test_malformed_key_file_is_a_config_error(tmp_path: Path, content: str, problem: str) -> None:
    settings = _settings(tmp_path)
    settings.card_token_key_file.parent.mkdir(parents=True, exist_ok=True)
    settings.card_token_key_file.write_text(content)
    with pytest.raises(ConfigError, match=problem):
        load_card_key(settings)


def _reference_luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


@given(st.from_regex(r"\A[0-9]{1,25}\Z"))
def test_luhn_agrees_with_the_textbook_algorithm(digits: str) -> None:
    assert luhn_valid(digits) is _reference_luhn(digits)
