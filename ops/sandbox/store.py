"""Storage: databases of collections of raw BSON documents ordered by ``_id``.

A :class:`Collection` keeps every document as the exact BSON bytes it was written with
(decoded only when a filter, update or projection needs the fields) in a dict keyed by
the ``_id``'s :func:`~ops.sandbox.bsonkey.sort_key`, plus a Python list of those keys in
MongoDB's BSON order. Range scans on ``_id`` are a bisect plus a slice of that list, and
a cursor resumes after the last key it returned, so documents inserted ahead of a cursor
show up and deleted ones vanish, as with a real collection scan. Appends in ``_id``
order (ObjectIds, counters) cost O(1); inserts in the middle a memmove.
Index definitions are kept for ``listIndexes``; only ``_id`` is unique and indexed.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.binary import Binary

from ops.sandbox.bsonkey import SortKey
from ops.sandbox.wire import CODEC

ID_INDEX: dict[str, Any] = {"v": 2, "key": {"_id": 1}, "name": "_id_"}
INTERNAL_DBS = frozenset({"admin", "local", "config"})


def ensure_id_first(raw: bytes) -> tuple[bytes, dict[str, Any]]:
    """Return ``raw`` with ``_id`` as its first field (MongoDB moves it there)."""
    doc = bson.decode(raw, CODEC)
    if raw[4] != 0 and raw[5:9] == b"_id\x00":
        return raw, doc
    if "_id" not in doc:
        doc = {"_id": bson.ObjectId(), **doc}
    else:
        doc = {"_id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
    return bson.encode(doc), doc


@dataclass
class Collection:
    """One collection: raw documents by ``_id`` key, keys kept sorted."""

    db: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    uuid: Binary = field(default_factory=lambda: Binary.from_uuid(uuid.uuid4()))
    indexes: dict[str, dict[str, Any]] = field(default_factory=lambda: {"_id_": dict(ID_INDEX)})
    docs: dict[SortKey, bytes] = field(default_factory=dict)
    keys: list[SortKey] = field(default_factory=list)
    data_size: int = 0

    @property
    def ns(self) -> str:
        return f"{self.db}.{self.name}"

    @property
    def pre_post_images(self) -> bool:
        spec = self.options.get("changeStreamPreAndPostImages") or {}
        return bool(spec.get("enabled"))

    def get(self, key: SortKey) -> bytes | None:
        return self.docs.get(key)

    def put(self, key: SortKey, raw: bytes) -> None:
        old = self.docs.get(key)
        if old is None:
            keys = self.keys
            if not keys or keys[-1] < key:
                keys.append(key)
            else:
                bisect.insort(keys, key)
        else:
            self.data_size -= len(old)
        self.docs[key] = raw
        self.data_size += len(raw)

    def remove(self, key: SortKey) -> bytes | None:
        old = self.docs.pop(key, None)
        if old is not None:
            i = bisect.bisect_left(self.keys, key)
            del self.keys[i]
            self.data_size -= len(old)
        return old

    def position(self, key: SortKey, inclusive: bool) -> int:
        """Index in ``keys`` of the first key ≥ ``key`` (or > when not inclusive)."""
        if inclusive:
            return bisect.bisect_left(self.keys, key)
        return bisect.bisect_right(self.keys, key)

    def iter_raw(self) -> Iterator[bytes]:
        docs = self.docs
        for key in list(self.keys):
            raw = docs.get(key)
            if raw is not None:
                yield raw

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "type": "collection", "options": dict(self.options),
                "info": {"readOnly": False, "uuid": self.uuid},
                "idIndex": dict(ID_INDEX)}

    def clone(self) -> Collection:
        copy = Collection(self.db, self.name, dict(self.options), self.uuid,
                          dict(self.indexes), dict(self.docs), list(self.keys), self.data_size)
        return copy


@dataclass
class Store:
    """All databases: ``{db: {collection name: Collection}}``."""

    dbs: dict[str, dict[str, Collection]] = field(default_factory=dict)

    def get(self, db: str, name: str) -> Collection | None:
        return self.dbs.get(db, {}).get(name)

    def create(self, db: str, name: str, options: dict[str, Any] | None = None) -> Collection:
        coll = Collection(db, name, dict(options or {}))
        self.dbs.setdefault(db, {})[name] = coll
        return coll

    def drop(self, db: str, name: str) -> Collection | None:
        colls = self.dbs.get(db)
        if colls is None:
            return None
        coll = colls.pop(name, None)
        if not colls:
            del self.dbs[db]
        return coll

    def attach(self, coll: Collection) -> None:
        self.dbs.setdefault(coll.db, {})[coll.name] = coll
