"""The tiny apps the benchmarks serve: one JSON endpoint, ``GET /hello``, per variant.

Each module builds ``app`` at import time; the variants differ only in what wraps the endpoint.
"""
