"""The benchmark: `python -m benchmarks.bench` (see bench.py)."""
