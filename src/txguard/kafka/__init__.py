"""Kafka: local broker runner, topic admin, client factories and serde."""
