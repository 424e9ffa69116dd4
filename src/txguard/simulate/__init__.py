"""Transaction simulators and load generators."""
