"""Benchmarks for newswatch. Run ``python -m bench --help``; results go to stdout and bench/results/."""
