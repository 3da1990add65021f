"""Cluster time and the capped oplog that change streams read.

:class:`Clock` hands out BSON Timestamps ``(seconds, increment)`` that strictly
increase: the increment counts up within a second and restarts at 1 when the wall
clock moves on (never backwards). Each committed change is one :class:`Entry`; the
entries of one transaction share the commit's timestamp and are told apart by their
index in the transaction, so every entry has a unique position ``(t, i, index)`` and
positions sort in commit order. The :class:`Oplog` keeps at most ``max_entries`` of them
(dropping the oldest first) and remembers the position of the newest dropped entry —
initially the moment the sandbox started — so a change stream asked to start before
it has lost history (code 286). Appending
wakes every waiting change-stream ``getMore`` through one event that is replaced after
each wake-up, so waiting costs nothing while the oplog is quiet.
"""

from __future__ import annotations

import bisect
import datetime
import time
from dataclasses import dataclass
from typing import Any

import anyio
from bson.int64 import Int64
from bson.timestamp import Timestamp

Position = tuple[int, int, int]
DEFAULT_MAX_ENTRIES = 1_000_000


class Clock:
    """Strictly increasing cluster time."""

    def __init__(self) -> None:
        self.t = int(time.time())
        self.i = 0

    def tick(self) -> Timestamp:
        now = int(time.time())
        if now > self.t:
            self.t, self.i = now, 1
        else:
            self.i += 1
        return Timestamp(self.t, self.i)

    def now(self) -> Timestamp:
        return Timestamp(self.t, max(self.i, 0))


@dataclass(slots=True)
class Entry:
    """One committed change, in the shape change-stream events are built from."""

    seq: int
    pos: Position
    ts: Timestamp
    wall: datetime.datetime
    op: str
    db: str
    coll: str | None
    key: dict[str, Any] | None = None          # documentKey
    post: bytes | None = None                  # document after the change
    pre: bytes | None = None                   # document before (pre-images on)
    update: dict[str, Any] | None = None       # updateDescription
    extra: dict[str, Any] | None = None        # to / operationDescription / ...
    lsid: dict[str, Any] | None = None
    txn: Int64 | None = None
    images: bool = False                       # collection records pre/post images
    uuid: Any = None                           # collection UUID (Binary subtype 4)
    head: bytes | None = None                  # cached event prefix (see events.build_raw)
    mid: bytes | None = None                   # cached ns + documentKey elements
    desc: bytes | None = None                  # cached updateDescription element
    lookup: Any = None                         # sort key of documentKey._id (updates)

    def ns_match(self, db: str | None, coll: str | None) -> bool:
        return (db is None or self.db == db) and (coll is None or self.coll == coll)


class Oplog:
    """Capped list of entries with a sequence number per entry."""

    def __init__(self, max_entries: int | None = None) -> None:
        self.max_entries = max_entries or DEFAULT_MAX_ENTRIES
        # Dropped entries leave the front of the lists in chunks (``_dead`` of them are
        # still there): deleting from the front of a long list on every write would
        # move every pointer each time once the cap is reached.
        self._entries: list[Entry] = []
        self._positions: list[Position] = []
        self._dead = 0
        self.base = 0                       # seq of the oldest entry held
        self.clock = Clock()
        # The oplog begins when the sandbox starts: nothing older was ever in it, so a
        # start point before that has lost its history, as on a fresh deployment.
        self.lost: Position = (self.clock.t, 0, -1)  # newest position no longer held
        self._changed: anyio.Event | None = None

    @property
    def entries(self) -> list[Entry]:
        """The entries held, oldest first (a copy)."""
        return self._entries[self._dead:]

    @property
    def held(self) -> int:
        return len(self._entries) - self._dead

    @property
    def next_seq(self) -> int:
        return self.base + self.held

    def append(self, entries: list[Entry]) -> None:
        for entry in entries:
            entry.seq = self.next_seq
            self._entries.append(entry)
            self._positions.append(entry.pos)
        overflow = self.held - self.max_entries
        if overflow > 0:
            self._dead += overflow
            self.lost = self._positions[self._dead - 1]
            self.base += overflow
            if self._dead >= max(1024, self.max_entries // 8):  # amortised O(1) a write
                del self._entries[:self._dead]
                del self._positions[:self._dead]
                self._dead = 0
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def make(self, ts: Timestamp, index: int, op: str, db: str, coll: str | None,
             **fields: Any) -> Entry:
        wall = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        wall = wall.replace(microsecond=wall.microsecond // 1000 * 1000)
        return Entry(0, (ts.time, ts.inc, index), ts, wall, op, db, coll, **fields)

    def seq_after(self, pos: Position) -> int:
        """Sequence number of the first entry positioned after ``pos``."""
        return self.base + bisect.bisect_right(self._positions, pos, self._dead) - self._dead

    def seq_at_or_after(self, pos: Position) -> int:
        return self.base + bisect.bisect_left(self._positions, pos, self._dead) - self._dead

    def get(self, seq: int) -> Entry | None:
        i = seq - self.base
        if 0 <= i < self.held:
            return self._entries[self._dead + i]
        return None

    def history_lost(self, after: Position) -> bool:
        """True if an entry positioned after ``after`` was already dropped."""
        return self.lost > after

    async def wait(self, seq: int, seconds: float) -> None:
        """Wait until an entry with sequence ≥ ``seq`` exists, or ``seconds`` pass."""
        with anyio.move_on_after(seconds):
            while self.next_seq <= seq:
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()
