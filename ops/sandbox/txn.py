"""Sessions and multi-document transactions.

A transaction starts with the first command that carries ``lsid``, ``txnNumber``,
``autocommit: false`` and ``startTransaction: true``; later commands of it repeat
``lsid``/``txnNumber``/``autocommit: false``. Its writes go to private copies of the
collections it touches (its reads see them too) and are kept as a list of changes.
``commitTransaction`` applies the changes to the real collections and appends their
oplog entries under one cluster time, each carrying ``lsid`` and ``txnNumber``;
``abortTransaction`` (or a new transaction on the same session) throws them away.
Snapshot isolation and write-conflict detection are not modelled: a transaction's
commit overwrites whatever other clients wrote to the same documents meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bson.int64 import Int64

from ops.sandbox.errors import CommandError
from ops.sandbox.registry import Ctx, Reply, command
from ops.sandbox.state import Change, Sandbox, create_collection, entry_for
from ops.sandbox.store import Collection

TRANSIENT = "TransientTransactionError"


@dataclass
class Transaction:
    lsid: dict[str, Any]
    number: int
    state: str = "in_progress"         # in_progress | committed | aborted
    views: dict[tuple[str, str], Collection] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)

    def view(self, sb: Sandbox, db: str, name: str, create: bool) -> Collection | None:
        key = (db, name)
        if key in self.views:
            return self.views[key]
        real = sb.store.get(db, name)
        if real is None:
            if not create:
                return None
            real = create_collection(sb, db, name, {})
        self.views[key] = view = real.clone()
        return view

    def commit(self, sb: Sandbox) -> None:
        if self.changes:
            ts = sb.tick()
            entries = []
            for index, ch in enumerate(self.changes):
                real = sb.store.get(ch.coll.db, ch.coll.name)
                if real is None:
                    real = create_collection(sb, ch.coll.db, ch.coll.name, ch.coll.options)
                if ch.after is None:
                    real.remove(ch.key)
                else:
                    real.put(ch.key, ch.after)
                entries.append(entry_for(sb, real, ch.op, ch.id_value, ch.before, ch.after,
                                         ch.update, ts, index, self.lsid, Int64(self.number)))
            sb.oplog.append(entries)
        self.state = "committed"
        self.views.clear()
        self.changes.clear()


def session_key(lsid: Any) -> bytes:
    if not isinstance(lsid, dict) or "id" not in lsid:
        raise CommandError(9, "lsid must be an object with an id")
    return bytes(lsid["id"])


def bind(sb: Sandbox, body: dict[str, Any], name: str) -> Transaction | None:
    """The transaction a command belongs to (starting one if it says so), or None."""
    if body.get("autocommit", True) is not False or "lsid" not in body:
        return None
    key = session_key(body["lsid"])
    number = int(body.get("txnNumber", 0))
    current = sb.sessions.get(key)
    if body.get("startTransaction"):
        if current is not None and current.number >= number and name not in (
                "commitTransaction", "abortTransaction"):
            raise CommandError(225, "txnNumber is not newer than the session's last one")
        txn = Transaction(dict(body["lsid"]), number)
        sb.sessions[key] = txn
        return txn
    if current is None or current.number != number:
        raise CommandError(251, f"Transaction {number} has been aborted or never started",
                           [TRANSIENT])
    if current.state == "aborted" or (current.state == "committed"
                                      and name != "commitTransaction"):
        raise CommandError(251, f"Transaction {number} has been aborted.", [TRANSIENT])
    return current


@command("commitTransaction")
def commit_transaction(ctx: Ctx) -> Reply:
    txn = ctx.txn
    if txn is None:
        raise CommandError(251, "no transaction in progress", [TRANSIENT])
    if txn.state == "in_progress":
        txn.commit(ctx.sb)
    return {"ok": 1.0}


@command("abortTransaction")
def abort_transaction(ctx: Ctx) -> Reply:
    txn = ctx.txn
    if txn is None or txn.state != "in_progress":
        raise CommandError(251, "no transaction in progress", [TRANSIENT])
    txn.state = "aborted"
    txn.views.clear()
    txn.changes.clear()
    return {"ok": 1.0}


@command("endSessions", "killSessions", "refreshSessions")
def end_sessions(ctx: Ctx) -> Reply:
    for lsid in ctx.body.get(ctx.name) or []:
        txn = ctx.sb.sessions.pop(session_key(lsid), None)
        if txn is not None and txn.state == "in_progress":
            txn.state = "aborted"
    return {"ok": 1.0}
