"""How large a SubmitTransactionBatches message may be: its result must reach the client.

A batch is answered by one result message, and gRPC clients receive at most 4 MiB per message
unless told otherwise. A result is larger than its batch: a created item's answer is the stored
transaction (its own id, card token and times besides the request's fields), and an invalid
item's answer names every bad field with a description (up to about 1.2 KB for an item of a few
bytes). A batch whose result could exceed the limit is refused before anything of it is stored:
a result too large to receive would leave its items stored and their answers lost.
"""

from __future__ import annotations

from typing import Final

from txguard.schema.v1.service_pb2 import SubmitTransactionBatch

# Items per batch: at most this many are answered by one result.
MAX_BATCH_ITEMS: Final = 1_000
# gRPC's default receive limit, less room for the result's own framing.
MAX_RESULT_BYTES: Final = 4 * 1024 * 1024 - 64 * 1024
# What an item's answer can add to the item's own bytes, besides the client id: the stored
# transaction's fields, or an INVALID_ARGUMENT naming all eleven fields (about 1,180 bytes).
ANSWER_GROWTH_BYTES: Final = 1_400


def batch_too_large(batch: SubmitTransactionBatch, client_id: str) -> str | None:
    """Why the batch's result could exceed what a client receives, or None when it cannot."""
    items = len(batch.items)
    if items > MAX_BATCH_ITEMS:
        return f"a batch holds at most {MAX_BATCH_ITEMS:,} items; this one holds {items:,}"
    bound = batch.ByteSize() + items * (ANSWER_GROWTH_BYTES + len(client_id.encode()))
    if bound <= MAX_RESULT_BYTES:
        return None
    return (
        f"the result of this batch of {items:,} items could reach {bound:,} bytes, more than "
        f"the {MAX_RESULT_BYTES:,} a client receives"
    )
