"""Benchmarks: run with ``python -m bench.NAME``; each writes JSON to bench/results/."""
