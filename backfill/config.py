"""Configuration of the backfill stage (the ``[backfill]`` table of the config file)."""

from __future__ import annotations

import msgspec


class BackfillConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the existing documents are copied."""

    workers: int = 4
    """Chunks copied at the same time by one process."""
    chunk_documents: int = 20_000
    """Target number of documents per chunk (from the collection's size estimate)."""
    chunk_bytes: int = 32 * 1024 * 1024
    """Target bytes per chunk; whichever target gives more chunks wins."""
    max_chunks_per_collection: int = 4096
    batch_size: int = 10_000
    """Documents per sink batch (one transaction), and at most per ``find``/``getMore``
    batch."""
    read_batch_documents: int = 4_000
    """Documents per ``find``/``getMore`` batch (several MB for KB-sized documents; the
    server caps a batch at 16 MB)."""
    batch_bytes: int = 32 * 1024 * 1024
    """Raw BSON bytes per sink batch at most (a single larger read batch still goes
    whole)."""
    samples_per_chunk: int = 10
    """``$sample`` documents drawn per planned chunk to choose split points."""
    throttle_docs_per_second: float = 0.0
    """Upper bound on copied documents per second for this process; 0 = unlimited.
    Adjustable at run time."""
    lease_seconds: float = 60.0
    """A claimed chunk returns to the pool if its worker stops renewing it this long."""
    progress_interval_seconds: float = 2.0
    """How often progress metrics (and the terminal line) are refreshed."""
