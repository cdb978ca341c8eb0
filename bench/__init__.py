"""Benchmarks: each script prints its figures and ends with a RESULT line."""
