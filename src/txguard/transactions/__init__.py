"""The transaction API: validation, card tokenization, idempotency, group-commit writes, gRPC."""
