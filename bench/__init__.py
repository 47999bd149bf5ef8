"""Wirepool benchmarks: ``python -m bench [driver|burst|steady|latency|hold|micro] [--quick] [--out DIR]``.

See bench/README.md.
"""
