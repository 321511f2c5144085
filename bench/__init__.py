"""Benchmark of the service against a bare Flask reference (see run.py)."""
