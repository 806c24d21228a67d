"""Benchmarks for s4d-serve (results in bench/RESULTS.md)."""
