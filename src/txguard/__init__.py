"""txguard: transaction processing with real-time fraud detection on Apache Kafka."""

__version__ = "0.1.0"
