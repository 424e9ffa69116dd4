"""A stored transaction's CreateTransactionResponse, written around its serialized record.

The response to a create, and to every replay of it, is exactly the transaction as accepted: the
store keeps that record once (the transaction row) and writes the response from it.
"""

from __future__ import annotations

from typing import Final

from txguard.schema.wire import length_delimited

# CreateTransactionResponse's one field: transaction = 1 (message).
_RESPONSE_TRANSACTION: Final = b"\x0a"


def create_transaction_response(serialized_transaction: bytes) -> bytes:
    """The serialized CreateTransactionResponse holding this serialized Transaction."""
    return length_delimited(_RESPONSE_TRANSACTION, serialized_transaction)
