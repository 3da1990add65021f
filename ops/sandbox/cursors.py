"""Server-side cursors for ``find``, ``aggregate`` and the ``list*`` commands.

A :class:`ScanCursor` walks a collection's ordered ``_id`` keys and remembers the last
key it returned, so every ``getMore`` is a bisect plus a slice; with no filter and no
projection it never decodes a document and a batch is the stored bytes wrapped in
``RawBSONDocument`` (which the BSON encoder copies verbatim). Anything it cannot do in
``_id`` order (other sorts, aggregation results) is materialised once into a
:class:`ListCursor`. Batches stop at ``batchSize`` documents or 16 MiB, whichever
comes first, but always hold at least one document.
"""

from __future__ import annotations

from typing import Any

import bson
from bson.raw_bson import RawBSONDocument

from ops.sandbox.bsonkey import SortKey
from ops.sandbox.engine import Doc, project
from ops.sandbox.store import Collection
from ops.sandbox.wire import CODEC

MAX_BATCH_BYTES = 16 * 1024 * 1024
DEFAULT_FIRST_BATCH = 101


class Cursor:
    """A cursor serving batches of documents; ``exhausted`` once it has no more."""

    id: int = 0
    ns: str = ""
    exhausted: bool = False
    killed: str | None = None
    """Why the server killed this cursor (its collection was renamed or dropped): the
    next ``getMore`` fails with QueryPlanKilled, as on a real server."""

    def batch(self, size: int | None) -> list[Any]:
        raise NotImplementedError


class ListCursor(Cursor):
    def __init__(self, ns: str, docs: list[Any]) -> None:
        self.ns = ns
        self.docs = docs
        self.pos = 0
        self.exhausted = not docs

    def batch(self, size: int | None) -> list[Any]:
        out: list[Any] = []
        nbytes = 0
        docs = self.docs
        while self.pos < len(docs) and (size is None or size <= 0 or len(out) < size):
            doc = docs[self.pos]
            if not isinstance(doc, RawBSONDocument):
                doc = RawBSONDocument(bson.encode(doc))
            if out and nbytes + len(doc.raw) > MAX_BATCH_BYTES:
                break
            nbytes += len(doc.raw)
            out.append(doc)
            self.pos += 1
        self.exhausted = self.pos >= len(docs)
        return out


class ScanCursor(Cursor):
    """Documents of one collection in ``_id`` order between two bounds."""

    def __init__(self, coll: Collection, low: SortKey | None, low_inc: bool,
                 high: SortKey | None, high_inc: bool, predicate: Any = None,
                 projection: Doc | None = None, skip: int = 0, limit: int = 0) -> None:
        self.coll = coll
        self.ns = coll.ns
        self.low, self.low_inc, self.high, self.high_inc = low, low_inc, high, high_inc
        self.predicate = predicate
        self.projection = projection
        self.skip = skip
        self.remaining = limit if limit > 0 else -1
        self.last: SortKey | None = None

    def batch(self, size: int | None) -> list[Any]:
        coll = self.coll
        keys, docs = coll.keys, coll.docs
        if self.last is not None:
            i = coll.position(self.last, False)
        elif self.low is not None:
            i = coll.position(self.low, self.low_inc)
        else:
            i = 0
        want = size if size and size > 0 else -1
        high, high_inc = self.high, self.high_inc
        predicate, projection = self.predicate, self.projection
        out: list[Any] = []
        nbytes = 0
        n = len(keys)
        while i < n and want != 0 and self.remaining != 0:
            key = keys[i]
            i += 1
            if high is not None and (key > high or (not high_inc and key == high)):
                n = -1
                break
            raw = docs.get(key)
            if raw is None:
                continue
            if predicate is not None or projection:
                doc = bson.decode(raw, CODEC)
                if predicate is not None and not predicate(doc):
                    self.last = key
                    continue
                if self.skip:
                    self.skip -= 1
                    self.last = key
                    continue
                if projection:
                    raw = bson.encode(project(doc, projection))
            elif self.skip:
                self.skip -= 1
                self.last = key
                continue
            if out and nbytes + len(raw) > MAX_BATCH_BYTES:
                i -= 1
                break
            self.last = key
            nbytes += len(raw)
            out.append(RawBSONDocument(raw))
            want -= 1
            self.remaining -= 1
        self.exhausted = self.remaining == 0 or n == -1 or i >= len(keys)
        return out
