"""Benchmarks run by jobs/benchmark.py; each module has add_arguments(parser) and run(args) -> dict."""
