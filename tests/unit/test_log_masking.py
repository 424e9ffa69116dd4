import logging

import pytest

from txguard.observability.logging import CardNumberMaskingFilter, mask_card_numbers


@pytest.mark.parametrize(
    "text",
    [
        "pan 4111111111111111 seen",
        "pan 4111 1111 1111 1111 seen",
        "pan 4111-1111-1111-1111 seen",
        "pan=378282246310005",
    ],
)
def test_luhn_valid_card_numbers_are_masked(text: str) -> None:
    masked = mask_card_numbers(text)
    assert "[card-number-masked]" in masked
    assert "1111111111" not in masked.replace(" ", "").replace("-", "")
    assert "378282246310005" not in masked


@pytest.mark.parametrize(
    "text", ["offset 4111111111111112", "amount 123456789012", "ts 1764380000", "id abc"]
)
def test_other_numbers_are_left_alone(text: str) -> None:
    assert mask_card_numbers(text) == text


def test_filter_masks_arguments_of_a_log_record() -> None:
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "request %s from %s", ("4111111111111111", "c1"), None
    )
    assert CardNumberMaskingFilter().filter(record)
    assert record.getMessage() == "request [card-number-masked] from c1"
