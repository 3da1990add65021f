"""Benchmarks, run one at a time as ``python -m tests.bench.<name>``; each prints its
measured figures next to a ceiling measured in the same run on the same machine."""
