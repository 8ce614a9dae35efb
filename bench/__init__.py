"""Benchmarks: the UDP load generator, the FreeRADIUS and pyrad baselines, and the side-by-side runs."""
