"""Throughput/latency benchmark of the serving stack: `python -m bench.run` (see bench/run.py)."""
