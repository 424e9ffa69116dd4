"""The benchmark harness: `txguard bench` measures every part side by side on one machine."""
