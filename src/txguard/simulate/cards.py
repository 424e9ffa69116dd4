"""Synthetic, Luhn-valid card numbers for simulated customers."""

from __future__ import annotations

import random

from txguard.schema.luhn import with_check_digit


def synthetic_card_number(rng: random.Random, *, length: int = 16, prefix: str = "4") -> str:
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    return with_check_digit(body)
