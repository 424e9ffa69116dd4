"""Generated from proto/txguard/v1: do not edit."""
