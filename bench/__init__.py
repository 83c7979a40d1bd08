"""Benchmarks: each module prints a table and one JSON line with its figures."""
