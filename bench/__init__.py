"""Benchmarks and profiles, run from the repo root as modules (``python -m bench.<name>``)."""
