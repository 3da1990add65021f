"""Cutting the event stream into batches: pure, no I/O, stepped by the tailer.

:class:`Accumulator` receives decoded events in stream order and the end of every
server reply, and knows at each moment which prefix of the stream may be applied and
the checkpoint that goes with it:

* **Source transactions stay whole.** Events carrying ``lsid`` + ``txnNumber`` are held
  as an *open group* until an event of another transaction (or none) follows, or a reply
  comes back empty — a committed transaction's events are all in the oplog at once, so
  an empty reply means the group is complete. From 8.0 a shared ``clusterTime`` is no
  transaction boundary; the session id and transaction number are. A batch is never cut
  inside a group, so the size limit is soft by at most one group.
* **Checkpoints are always safe resume points.** With no open group and the reply fully
  consumed, the checkpoint is the reply's ``postBatchResumeToken`` (past everything the
  server scanned, even with no matching event: a quiet stream keeps advancing) — unless
  the reply was full, when the last event's token says the same. With an open group it
  is the token of the last settled event.
* **What a commit claims.** From MongoDB 6.1 a large ``deleteMany`` (and TTL deletes)
  is logged in batches of up to 10 deletes per oplog entry (SERVER-63044, SERVER-64972,
  SERVER-76177): their events share one cluster time and carry no ``lsid``, so a batch
  may end among them. Resuming is exact either way (by token), but "applied up to
  time t" is not: :attr:`Pending.applied_through` is the position's time only when the
  server is known to have moved past it — a later event was read, an empty reply came
  back, or a reply ended with a post-batch token other than its last event's —, else
  one tick less. The tailer's ``last_applied`` (and lag) follow it.
* **Cuts** (:meth:`Accumulator.due`): ``max_events`` settled events, the oldest pending
  event older than ``max_wait`` seconds, or — natural batching — a reply shorter than
  requested, meaning the server had nothing more queued at that instant. Under load
  replies are full and batches grow; when idle, an event is applied at once.

:func:`to_changes` turns settled data events into the sink's :class:`~cdc.batch.Change`
list: one change per document key (the last in stream order wins, which is also the
newest state), namespaces renamed or skipped through a resolver (DDL policies). An
update still without a document here was looked for by :mod:`cdc.refetch` where the
document lives *now* (following a rename under the ``follow`` policy) and is absent
there too: it was deleted since (its delete event follows, with a newer version) or its
collection was dropped (the DDL policy decides, and no policy deletes target rows). So
it emits nothing — and a ``null`` lookup never loses an update silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from cdc.batch import Change, Op, Origin
from cdc.events import ChangeEvent, Delete, Insert, Replace, TxnId, Update, id_document
from cdc.types import ClusterTime, Namespace


class Position(msgspec.Struct, frozen=True):
    """A resume point: the token to resume after and the cluster time it stands for."""

    token: bytes
    cluster_time: ClusterTime


class Pending(msgspec.Struct, frozen=True):
    """What one flush applies: settled events and the checkpoint committed with them."""

    events: list[ChangeEvent]
    position: Position
    applied_through: ClusterTime
    """Once this batch (and every one before it) is committed, every event with a
    cluster time up to this one is applied: the position's time, or one tick less when
    more events of that time may still follow (see the module docstring)."""


class Accumulator:
    """Groups events into batches without cutting source transactions."""

    def __init__(self, *, max_events: int, max_wait: float) -> None:
        self.max_events = max_events
        self.max_wait = max_wait
        self._settled: list[ChangeEvent] = []
        self._open: list[ChangeEvent] = []
        self._open_txn: TxnId | None = None
        self._position: Position | None = None
        self._committed: Position | None = None
        self._since: float | None = None
        self._short_reply = False
        self._last_time: ClusterTime | None = None
        """The cluster time of the last event added (the newest: times never go back)."""
        self._past = False
        """The server scanned past the position (no event of its time is still to come)."""

    @property
    def settled(self) -> int:
        return len(self._settled)

    @property
    def held(self) -> int:
        """Events of a transaction group not yet known to be complete."""
        return len(self._open)

    def start_at(self, position: Position | None) -> None:
        """Forget everything pending and continue from ``position`` (a reopened stream)."""
        self._settled = []
        self._open = []
        self._open_txn = None
        self._position = position
        self._committed = position
        self._since = None
        self._short_reply = False
        self._last_time = None
        self._past = False

    def add(self, event: ChangeEvent, now: float) -> None:
        if self._since is None:
            self._since = now
        self._last_time = event.cluster_time
        self._past = False
        if event.txn is not None and event.txn == self._open_txn:
            self._open.append(event)
            return
        self._close_group()
        if event.txn is not None:
            self._open = [event]
            self._open_txn = event.txn
        else:
            self._settled.append(event)
            self._position = Position(event.token, event.cluster_time)

    @property
    def held_until(self) -> Position | None:
        """The position of the last event of the open transaction group (``None``: no
        group is open): where the stream has been read up to, past the checkpoint."""
        if not self._open:
            return None
        last = self._open[-1]
        return Position(last.token, last.cluster_time)

    def end_of_reply(self, *, count: int, requested: int, post_batch_token: bytes | None,
                     reply_time: ClusterTime | None) -> None:
        """Record the end of one server reply of ``count`` events (``requested`` asked)."""
        if count == 0:
            self._close_group()
        self._short_reply = count < requested
        if self._open or post_batch_token is None:
            return
        if count and count >= requested:
            # A full batch: the server cannot have scanned past its last event, so the
            # last event's token is the same point (and does not depend on the server
            # getting its post-batch token right for a batch cut by size).
            return
        previous = self._position
        last = previous.cluster_time if previous else None
        times = [t for t in (last, reply_time) if t is not None]
        when = max(times) if times else ClusterTime(0, 0)
        self._position = Position(post_batch_token, when)
        # Past the last event, unless the token is that event's own (a reply cut by the
        # server's byte limit, maybe in the middle of events sharing its time); an empty
        # reply means the server had nothing more at all.
        self._past = count == 0 or previous is None or post_batch_token != previous.token

    def close_group(self) -> None:
        """Treat the open transaction group as complete (e.g. a DDL event follows it)."""
        self._close_group()

    def _close_group(self) -> None:
        if self._open:
            self._settled.extend(self._open)
            last = self._open[-1]
            self._position = Position(last.token, last.cluster_time)
            self._open = []
            self._open_txn = None

    def due(self, now: float) -> bool:
        """Whether a flush should happen now."""
        if len(self._settled) >= self.max_events:
            return True
        if self._settled and self._short_reply:
            return True
        if self._since is not None and now - self._since >= self.max_wait:
            return bool(self._settled) or self._advanced()
        # Nothing pending: a moved position (empty batch) is still worth committing.
        return not self._settled and not self._open and self._advanced()

    def _advanced(self) -> bool:
        return self._position is not None and self._position != self._committed

    def take(self) -> Pending | None:
        """Settled events and their checkpoint; ``None`` when there is nothing to commit."""
        if self._position is None or (not self._settled and not self._advanced()):
            return None
        at = self._position.cluster_time
        last = self._last_time
        through = at if self._past or (last is not None and last > at) else at.before()
        pending = Pending(self._settled, self._position, through)
        self._settled = []
        self._since = None if not self._open else self._since
        return pending

    def committed(self, position: Position) -> None:
        """The sink committed up to ``position``."""
        self._committed = position

    def idle_through(self) -> ClusterTime | None:
        """With nothing pending and the position already handed to the sink, its time
        when the server is known to have nothing more up to it (see ``_past``): a
        resumed stream whose checkpoint is already where the server stands commits no
        new position, yet is caught up. ``None`` otherwise."""
        position = self._position
        if (self._settled or self._open or not self._past or position is None
                or position != self._committed):
            return None
        return position.cluster_time


_OP_NAMES: dict[type, str] = {Insert: "insert", Update: "update", Replace: "replace",
                              Delete: "delete"}

Resolver = Callable[[Namespace], Namespace | None]
"""Maps an event's namespace to the namespace whose table receives it, or ``None``."""


def _identity(ns: Namespace) -> Namespace | None:
    return ns


_DATA_TYPES: frozenset[type] = frozenset({Insert, Update, Replace, Delete})


def to_changes(events: Sequence[ChangeEvent], resolve: Resolver = _identity
               ) -> tuple[list[Change], Counter[tuple[str, str]]]:
    """The sink's changes for ``events`` (coalesced by key) and event counts by (ns, op)."""
    # Per target namespace: {id_bson: change}, in the order of each key's last occurrence.
    latest: dict[Namespace, dict[bytes, Change]] = {}
    seen: dict[tuple[Namespace, type], int] = {}
    targets: dict[Namespace, Namespace | None] = {}
    upsert, delete, stream = Op.UPSERT, Op.DELETE, Origin.STREAM  # bound once: hot loop
    data, delete_type, insert_type = _DATA_TYPES, Delete, Insert
    last_ns: Namespace | None = None  # events of one namespace share its object
    target: Namespace | None = None
    changes: dict[bytes, Change] = {}
    for any_event in events:
        kind = type(any_event)
        if kind not in data:  # a set lookup: isinstance of a union costs ~10x more
            continue
        event: Any = any_event  # a data event, by the test above
        ns = event.ns
        if ns is not last_ns:
            last_ns = ns
            target = targets[ns] if ns in targets else targets.setdefault(ns, resolve(ns))
            if target is not None:
                changes = latest.setdefault(target, {})
        if target is None:
            continue
        counted = (target, kind)
        seen[counted] = seen.get(counted, 0) + 1
        ct = event.cluster_time
        version = ct.t << 32 | ct.i  # ClusterTime.packed, inlined
        id_bson = id_document(event.document_key)
        if kind is delete_type:
            change = Change(target, id_bson, version, delete, None, stream)
        elif event.full_document is None:
            # Absent even where it lives now (cdc.refetch): deleted since — the later
            # delete settles it — or its collection dropped, which deletes no row.
            continue
        else:
            change = Change(target, id_bson, version, upsert, event.full_document, stream,
                            kind is insert_type)
        if id_bson in changes:
            del changes[id_bson]  # re-inserted: dict order is the order of last occurrence
        changes[id_bson] = change
    counts: Counter[tuple[str, str]] = Counter(
        {(str(ns), _OP_NAMES[op]): n for (ns, op), n in seen.items()})
    return [c for per in latest.values() for c in per.values()], counts
