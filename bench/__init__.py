"""Benchmarks: `make bench` (python -m bench). Each prints figures and ratios to a baseline."""
