"""The daemon: the composition root that wires the stages into one task group."""

from __future__ import annotations

from ops.config import Config


def run_daemon(config: Config) -> int:
    """Run until SIGTERM; returns the process exit code."""
    raise NotImplementedError("the daemon arrives with the tailer and the backfill")
