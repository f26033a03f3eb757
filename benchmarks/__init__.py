"""Benchmarks: each module has ``run(quick=False) -> list[dict]`` rows and prints them when run as a script."""
