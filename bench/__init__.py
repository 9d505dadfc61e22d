"""Benchmarks: ratios measured in one run (``python -m bench.run``, ``make bench``); see docs/performance.md."""
