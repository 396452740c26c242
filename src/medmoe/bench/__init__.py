"""Benchmarks shipped with the package (also reachable as ``medmoe bench ...`` and ``benchmarks/*.py``)."""
