"""Idempotency: the request fingerprint and the registry of requests being processed.

Semantics (the store enforces the first two, across processes):
- same client + key + fingerprint after completion -> the stored original response, byte for byte;
- same client + key, other fingerprint -> FAILED_PRECONDITION, nothing stored;
- same client + key while the first request is still in flight in this process -> ABORTED.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from json.encoder import encode_basestring_ascii

from txguard.schema.v1.service_pb2 import CreateTransactionRequest

# Bumping the version makes every stored key look reused: only with a migration of the store.
_FINGERPRINT_DOMAIN = "txguard.v1.CreateTransactionRequest/fingerprint-1"
# json's own C string encoder (ASCII-only output with \uXXXX escapes), without json.dumps' per-call
# encoder set-up.
_json_string: Callable[[str], str] = encode_basestring_ascii
_FINGERPRINT_DOMAIN_JSON = _json_string(_FINGERPRINT_DOMAIN)


def request_fingerprint(
    client_id: str, request: CreateTransactionRequest, card_token: str
) -> bytes:
    """SHA-256 of the request as sent, scoped by client, with the card number as its token.

    The hashed text is the compact ASCII JSON array of the fields in a fixed order (what
    `json.dumps(fields, separators=(",", ":"))` gives), not the protobuf encoding: protobuf
    serialization is not guaranteed stable across library versions, and a stored fingerprint
    must outlive upgrades. occurred_at enters only as sent (null when the client left it out), so
    a retry of a request whose time defaulted to "now" still matches. A field added to the
    request later must be appended only when set, so existing fingerprints keep matching.
    """
    if request.HasField("occurred_at"):
        occurred = f"[{request.occurred_at.seconds},{request.occurred_at.nanos}]"
    else:
        occurred = "null"
    canonical = ",".join(
        (
            _FINGERPRINT_DOMAIN_JSON,
            _json_string(client_id),
            _json_string(request.idempotency_key),
            _json_string(request.account_id),
            str(request.amount_minor),
            _json_string(request.currency),
            _json_string(request.terminal_id),
            _json_string(card_token),
            occurred,
            _json_string(request.merchant_id),
            str(int(request.channel)),
            _json_string(request.country),
            _json_string(request.device_id),
        )
    )
    return hashlib.sha256(f"[{canonical}]".encode("ascii")).digest()


class InFlightRequests:
    """(client id, idempotency key) pairs being processed by this process.

    Confined to the event loop thread: claims and releases happen there only, so no lock.
    """

    __slots__ = ("_active",)

    def __init__(self) -> None:
        self._active: set[tuple[str, str]] = set()

    def try_claim(self, client_id: str, idempotency_key: str) -> bool:
        """Claim the key; False when a request with it is already in flight."""
        entry = (client_id, idempotency_key)
        if entry in self._active:
            return False
        self._active.add(entry)
        return True

    def release(self, client_id: str, idempotency_key: str) -> None:
        self._active.discard((client_id, idempotency_key))

    def __len__(self) -> int:
        return len(self._active)
