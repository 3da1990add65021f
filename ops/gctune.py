"""The cyclic garbage collector's settings for long-running processes of ours (the
daemon, the sandbox server).

Each batch allocates tens of thousands of short-lived objects that reference counting
frees; at CPython's default thresholds (700, 10, 10) a young-generation collection ran
every 700 of them and an older one now and then over the whole heap — about a tenth of
the backfill's CPU, and more for the sandbox, whose heap holds every stored document
and oplog entry.
"""

from __future__ import annotations

import gc

GC_THRESHOLD = (50_000, 20, 100)
"""Thresholds of the three generations, as :func:`gc.set_threshold` takes them."""


def tune_gc() -> None:
    """Collect cyclic garbage less often, and never scan what start-up created."""
    gc.freeze()  # modules, classes, config: alive until exit, no need to traverse them
    gc.set_threshold(*GC_THRESHOLD)
