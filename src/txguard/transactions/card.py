"""Card numbers at the edge: the Luhn check, the keyed token and the token key itself.

A card number (PAN) is replaced by `CardTokenizer.tokenize` as soon as the request is valid;
only the token, the BIN and the last four digits travel further. The token is HMAC-SHA256 under
a deployment secret, so equal cards give equal tokens (features can count a card) without the
PAN being recoverable from anything txguard stores or publishes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from txguard.config import ConfigError, Settings

log = logging.getLogger(__name__)

# The shortest key accepted; the same bound as TXGUARD_CARD_TOKEN_KEY in config.
MIN_KEY_BYTES = 32
KEY_FILE_BYTES = 32

_ASCII_DIGITS = frozenset("0123456789")


def is_card_number_shape(value: str) -> bool:
    """12 to 19 ASCII digits (str.isdigit would also accept other scripts' digits)."""
    return 12 <= len(value) <= 19 and _ASCII_DIGITS.issuperset(value)


@dataclass(frozen=True, slots=True)
class CardToken:
    """What remains of a card number after tokenization."""

    token: str
    bin: str
    last4: str

    def __repr__(self) -> str:
        return f"CardToken(token={self.token[:8]}..., bin={self.bin}, last4={self.last4})"


class CardTokenizer:
    """Keyed tokenization of card numbers: token = hex HMAC-SHA256(key, PAN).

    HMAC (RFC 2104) is computed from SHA-256 states keyed once at construction and copied per
    card. Besides saving the key schedule per call, it keeps the GIL: `hmac.digest` releases and
    re-takes it on every call, which stalls the event loop whenever the writer thread is busy.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"card token key must be at least {MIN_KEY_BYTES} bytes")
        block = hashlib.sha256().block_size
        if len(key) > block:
            key = hashlib.sha256(key).digest()
        key = key.ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def __repr__(self) -> str:
        return "CardTokenizer(<key redacted>)"

    def tokenize(self, pan: str) -> CardToken:
        """Token, BIN (first six digits) and last four of a validated card number."""
        inner = self._inner.copy()
        inner.update(pan.encode("ascii"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return CardToken(token=outer.hexdigest(), bin=pan[:6], last4=pan[-4:])


def load_card_key(settings: Settings) -> bytes:
    """The token key: TXGUARD_CARD_TOKEN_KEY if set, else the hex key file; ConfigError if none."""
    if settings.card_token_key is not None:
        return settings.card_token_key
    path = settings.card_token_key_file
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"no card token key: set TXGUARD_CARD_TOKEN_KEY to at least {2 * MIN_KEY_BYTES} hex "
            f"characters, or create the key file {path} (TXGUARD_CARD_TOKEN_KEY_FILE), e.g. "
            f"`umask 077; openssl rand -hex {KEY_FILE_BYTES} > {path}`. `txguard demo` creates "
            "one for you. Keep the key: a new key gives every card a new token."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the card token key file {path} (TXGUARD_CARD_TOKEN_KEY_FILE): {exc}"
        ) from exc
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(
            f"the card token key file {path} (TXGUARD_CARD_TOKEN_KEY_FILE) must hold hex digits"
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the card token key in {path} (TXGUARD_CARD_TOKEN_KEY_FILE) must be at least "
            f"{MIN_KEY_BYTES} bytes ({2 * MIN_KEY_BYTES} hex characters)"
        )
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("card token key file %s is accessible to other users; chmod 600 it", path)
    return key


def create_card_key_file(path: Path) -> bytes:
    """Write a new random key (hex, mode 0600) to `path` and return it.

    Refuses to replace an existing file (FileExistsError): a new key would silently give every
    card a new token and break every card-level feature and history.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_FILE_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key.hex().encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key
