"""What the sink consumes: versioned changes, grouped in batches with their checkpoint.

CDC, backfill and verify's repair all speak this one shape, so the sink has a single
write path (DESIGN §3.1–3.3):

* :class:`Change` — one document's new state (``upsert``, raw BSON) or its absence
  (``delete``), with the version (packed cluster time) that state had in MongoDB and
  the :class:`Origin` that decides ties: a change event wins a tie against what is
  stored, a backfill row loses it.
* :class:`Checkpoint` — the stream position committed in the same transaction as the
  batch's rows (resume token + cluster time).
* :class:`Batch` — changes in stream order, plus optionally a checkpoint and the
  backfill chunk the batch completes.
"""

from __future__ import annotations

import enum

import msgspec

from cdc.types import Namespace


class Origin(enum.StrEnum):
    """Who produced a change; decides ties between equal versions."""

    STREAM = "stream"
    """A change event: applied when its version is >= the stored one (stream order wins)."""
    BACKFILL = "backfill"
    """A copied document: applied only when its version is > the stored one."""


class Op(enum.StrEnum):
    UPSERT = "upsert"
    """``doc`` holds the document's full state at ``version``."""
    DELETE = "delete"
    """The document no longer exists at ``version``; a tombstone keeps that fact."""


class Change(msgspec.Struct, frozen=True):
    """One document's state at one version."""

    namespace: Namespace
    id_bson: bytes
    """The BSON document ``{"_id": <value>}`` with the original BSON type of the id."""
    version: int
    """Packed cluster time (``t << 32 | i``) of this state."""
    op: Op
    doc: bytes | None = None
    """Raw BSON of the whole document for upserts; ``None`` for deletes."""
    origin: Origin = Origin.STREAM
    fresh: bool = False
    """A hint: the document was inserted at this version (a change stream ``insert``),
    so its key probably has no row yet and the sink may COPY it straight into the
    target. Never trusted for correctness: the primary key and a tombstone probe decide."""


class Checkpoint(msgspec.Struct, frozen=True):
    """A resumable stream position."""

    stream: str
    """Name of the stream (one row per stream in the control schema)."""
    resume_token: bytes | None
    """Raw BSON of the resume token (``{"_data": ...}``); ``None`` before the first event."""
    cluster_time: int
    """Packed cluster time up to which every change has been applied."""


class Letter(msgspec.Struct, frozen=True):
    """A dead letter the producer of a batch writes in the batch's own transaction (e.g. a
    change event too large to read), so it exists exactly when the batch committed."""

    namespace: str
    id_bson: bytes | None
    version: int | None
    raw: bytes | None
    reason: str
    resolved: bool = False
    """Settled in the same batch (e.g. re-fetched by ``_id``): ``resolved_at`` is set."""


class Batch(msgspec.Struct):
    """Changes applied atomically, in one PostgreSQL transaction."""

    changes: list[Change]
    checkpoint: Checkpoint | None = None
    chunk_id: int | None = None
    """Backfill chunk marked done in the same transaction, if this batch completes one."""
    letters: list[Letter] = msgspec.field(default_factory=list)
    """Dead letters written in the same transaction as the changes and the checkpoint."""
    after: int | None = None
    """Packed cluster time of the stream position this batch's events follow (the
    applier's last committed checkpoint). With a checkpoint, the sink refuses the batch
    (:class:`~cdc.errors.StreamFenced`) when the stored checkpoint of its stream is
    already past it: stream batches are applied in stream order, one applier at a time.
    ``None``: not checked (the first checkpoint of a stream)."""
    coalesced: bool = False
    """No two changes share a namespace and raw ``_id`` (the tailer coalesced them), so
    the sink skips its own coalescing by raw id; two ids that map to one key are still
    decided by the version rule."""
    reader: int | None = None
    """The read lease (:meth:`cdc.sink.Sink.open_reader`) under which this batch's
    backfill changes were read; required when it has any. The sink renews it in the
    batch's transaction, or refuses the batch if it has expired."""
