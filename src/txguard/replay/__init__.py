"""`txguard replay`: a dataset through the real pipeline, features and scores out."""
