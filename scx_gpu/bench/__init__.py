"""Benchmarks: the scheduler against the mainline knobs, measured side by side."""
