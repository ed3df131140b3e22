"""Benchmarks (run as scripts: ``python bench/chassis.py``); see docs/benchmarks.md."""
