"""Protobuf contract (generated code in v1/) and helpers for money and identifiers."""
