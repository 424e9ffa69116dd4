"""Observability: logging (and, later, the metric catalogue and exporters)."""
