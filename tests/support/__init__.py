"""Helpers for the tailer's tests: workloads, comparison, a tailer in a subprocess."""
