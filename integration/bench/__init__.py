"""Benchmarks of hero-procd, each beside a baseline measured in the same run: `make bench`."""
