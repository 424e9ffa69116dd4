"""`txguard demo`: the whole pipeline with a load generator and a live console view."""
