"""Durable storage behind a small interface: SQLite (embedded default)."""
