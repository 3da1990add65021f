"""Named types for the identities and units every stage shares.

* :class:`Namespace` — a MongoDB ``db.coll``.
* :class:`ClusterTime` — a BSON Timestamp ``(t, i)``; its packed form
  ``t << 32 | i`` is the bigint version stored on every target row (DESIGN §3.1).
* :class:`ResumeToken` — a change stream's opaque ``_id``; compared only for equality.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec
from bson.timestamp import Timestamp


class Namespace(msgspec.Struct, frozen=True, order=True):
    """A MongoDB namespace: database and collection."""

    db: str
    coll: str

    @classmethod
    def parse(cls, text: str) -> Namespace:
        """Parse ``db.coll`` (the collection may itself contain dots)."""
        db, sep, coll = text.partition(".")
        if not sep or not db or not coll:
            raise ValueError(f"namespace must look like 'db.collection', got {text!r}")
        return cls(db, coll)

    def __str__(self) -> str:
        return f"{self.db}.{self.coll}"


class ClusterTime(msgspec.Struct, frozen=True, order=True):
    """A MongoDB cluster time: seconds since the epoch and an increment within the second."""

    t: int
    i: int

    @property
    def packed(self) -> int:
        """The bigint version: ``t << 32 | i``; orders exactly like the Timestamp."""
        return (self.t << 32) | self.i

    @classmethod
    def from_packed(cls, value: int) -> ClusterTime:
        return cls(value >> 32, value & 0xFFFFFFFF)

    @classmethod
    def from_bson(cls, ts: Timestamp) -> ClusterTime:
        return cls(ts.time, ts.inc)

    def to_bson(self) -> Timestamp:
        return Timestamp(self.t, self.i)

    def seconds(self) -> float:
        """Seconds since the epoch (the increment does not count as time)."""
        return float(self.t)

    def before(self) -> ClusterTime:
        """The cluster time one tick earlier (the newest time strictly before this one)."""
        return ClusterTime.from_packed(max(self.packed - 1, 0))


ZERO_TIME = ClusterTime(0, 0)


class ResumeToken(msgspec.Struct, frozen=True):
    """A change stream resume token: the event's ``_id``, kept as raw BSON bytes."""

    raw: bytes

    def as_document(self) -> dict[str, Any]:
        import bson

        return dict(bson.decode(self.raw))


class Phase(enum.StrEnum):
    """Where a migration stands; persisted in the control schema (DESIGN §4)."""

    INIT = "init"
    """Nothing copied yet; the stream has not been opened."""
    BACKFILLING = "backfilling"
    """The stream runs and existing documents are being copied."""
    CATCHING_UP = "catching_up"
    """Backfill done; the stream is working off its lag."""
    IN_SYNC = "in_sync"
    """Backfill done, lag under the threshold, last verification clean."""
    RESYNC_REQUIRED = "resync_required"
    """The stream lost its history (code 286): what may be missed must be copied again."""
    CUT_OVER = "cut_over"
    """PostgreSQL is primary; changes flow back to MongoDB until finalized."""
    ROLLED_BACK = "rolled_back"
    """MongoDB is primary again after a cutover."""
    FINALIZED = "finalized"
    """Reverse replication stopped; the migrator's bookkeeping dropped."""
