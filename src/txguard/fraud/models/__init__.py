"""Fraud models: training, artifacts that load without unpickling, and offline evaluation."""
