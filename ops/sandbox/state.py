"""The sandbox's state and its single write path.

:class:`Sandbox` owns the storage, the oplog, open cursors, fail points, sessions and
the user-write block. Everything runs on one asyncio event loop, so a command handler
is atomic unless it awaits; only change-stream ``getMore``, blocked connections and
the awaitable ``hello`` ever wait.

Every write goes through a :class:`Writer`: handlers change documents in a
:class:`~ops.sandbox.store.Collection` and report each change with
:meth:`Writer.record`. Outside a transaction a change is committed at once with a
fresh cluster time. Inside one, the writer hands out private copies of the collections
the transaction touches and buffers the changes; ``commitTransaction`` applies them to
the real collections and appends all their oplog entries under one timestamp (with
``lsid`` and ``txnNumber``), so other clients see the transaction's writes at once or
not at all.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bson.objectid import ObjectId
from bson.timestamp import Timestamp

from ops.sandbox.bsonkey import SortKey
from ops.sandbox.errors import CommandError
from ops.sandbox.events import encode_parts
from ops.sandbox.oplog import Entry, Oplog
from ops.sandbox.store import INTERNAL_DBS, Collection, Store

if TYPE_CHECKING:
    from ops.sandbox.cursors import Cursor
    from ops.sandbox.faults import FailPoints
    from ops.sandbox.txn import Transaction

SET_NAME = "rs0"


@dataclass
class Change:
    """One document change inside a transaction, waiting for the commit."""

    coll: Collection
    op: str
    key: SortKey
    id_value: Any
    before: bytes | None
    after: bytes | None
    update: dict[str, Any] | None


@dataclass
class Sandbox:
    host: str
    port: int
    oplog_max_entries: int | None = None
    store: Store = field(default_factory=Store)
    cursors: dict[int, Cursor] = field(default_factory=dict)
    sessions: dict[bytes, Transaction] = field(default_factory=dict)
    write_blocked: bool = False
    #: last retryable write per session: lsid id -> (txnNumber, reply)
    retries: dict[bytes, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    process_id: ObjectId = field(default_factory=ObjectId)
    started: float = field(default_factory=time.time)
    oplog: Oplog = field(init=False)
    failpoints: FailPoints = field(init=False)
    _cursor_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1001))

    def __post_init__(self) -> None:
        from ops.sandbox.faults import FailPoints

        self.oplog = Oplog(self.oplog_max_entries)
        self.failpoints = FailPoints()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def new_cursor_id(self) -> int:
        return next(self._cursor_ids) * 7919

    def operation_time(self) -> Timestamp:
        return self.oplog.clock.now()

    def tick(self) -> Timestamp:
        return self.oplog.clock.tick()

    def ddl_event(self, op: str, db: str, coll: str | None, **fields: Any) -> Timestamp:
        """Commit a non-document change (create, drop, rename, index, modify …)."""
        ts = self.tick()
        self.oplog.append([self.oplog.make(ts, 0, op, db, coll, **fields)])
        return ts


class Writer:
    """Where one command's writes go: straight to storage, or into a transaction."""

    def __init__(self, sb: Sandbox, txn: Transaction | None = None) -> None:
        self.sb = sb
        self.txn = txn

    def collection(self, db: str, name: str, create: bool = True) -> Collection | None:
        if self.txn is not None:
            return self.txn.view(self.sb, db, name, create)
        coll = self.sb.store.get(db, name)
        if coll is None and create:
            coll = create_collection(self.sb, db, name, {})
        return coll

    def record(self, coll: Collection, op: str, key: SortKey, id_value: Any,
               before: bytes | None, after: bytes | None,
               update: dict[str, Any] | None = None) -> None:
        """Report a change already applied to ``coll``."""
        if self.txn is not None:
            self.txn.changes.append(Change(coll, op, key, id_value, before, after, update))
            return
        ts = self.sb.tick()
        self.sb.oplog.append([entry_for(self.sb, coll, op, id_value, before, after, update,
                                        ts, 0)])

    def record_deletes(self, coll: Collection, deleted: list[tuple[SortKey, Any, bytes]]
                       ) -> None:
        """Report the documents one multi-delete statement removed from ``coll`` (already
        applied): as MongoDB 6.1+ batches them (SERVER-63044, SERVER-64972), up to
        :data:`DELETE_BATCH` deletes share one oplog entry and so one cluster time, with
        no ``lsid``; a group of one is a plain delete (SERVER-70544)."""
        if self.txn is not None or len(deleted) < 2:
            for key, id_value, raw in deleted:
                self.record(coll, "delete", key, id_value, raw, None)
            return
        for at in range(0, len(deleted), DELETE_BATCH):
            group = deleted[at:at + DELETE_BATCH]
            if len(group) == 1:
                key, id_value, raw = group[0]
                self.record(coll, "delete", key, id_value, raw, None)
                continue
            ts = self.sb.tick()
            self.sb.oplog.append([
                entry_for(self.sb, coll, "delete", id_value, raw, None, None, ts, index)
                for index, (_, id_value, raw) in enumerate(group)])


DELETE_BATCH = 10
"""Deletes per batched-delete oplog entry (MongoDB's ``batchedDeletesTargetBatchDocs``
default, SERVER-76177)."""


def entry_for(sb: Sandbox, coll: Collection, op: str, id_value: Any, before: bytes | None,
              after: bytes | None, update: dict[str, Any] | None, ts: Timestamp, index: int,
              lsid: dict[str, Any] | None = None, txn: Any = None) -> Entry:
    images = coll.pre_post_images
    post = after if (op in ("insert", "replace") or images) else None
    pre = before if images else None
    return encode_parts(sb.oplog.make(ts, index, op, coll.db, coll.name,
                                      key={"_id": id_value}, post=post, pre=pre,
                                      update=update, lsid=lsid, txn=txn, images=images,
                                      uuid=coll.uuid))


def create_collection(sb: Sandbox, db: str, name: str, options: dict[str, Any]) -> Collection:
    check_ns(db, name)
    coll = sb.store.create(db, name, options)
    sb.ddl_event("create", db, name, uuid=coll.uuid, extra={
        "operationDescription": {"idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"},
                                 **({} if not options else {k: v for k, v in options.items()})},
    })
    return coll


def check_ns(db: str, name: str) -> None:
    if not db or any(c in db for c in '/\\. "$') or not name or "$" in name or "\x00" in name:
        raise CommandError(73, f"Invalid namespace specified '{db}.{name}'")


def check_writable(sb: Sandbox, db: str, bypass: bool) -> None:
    if sb.write_blocked and not bypass and db not in INTERNAL_DBS:
        raise CommandError(371, "User writes blocked")
