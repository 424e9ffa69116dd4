"""Fraud detection: the detector loop and its steps (decode, dedup, state, score, decide, emit)."""
