"""Reading the change stream ahead while the tailer decodes and applies.

A change stream is read with one ``getMore`` at a time on one cursor, and the server
only produces the next reply when asked. :class:`ReadAhead` keeps asking while the
tailer is busy with something else — consuming a reply or committing a batch to
PostgreSQL — so that reading overlaps writing:

* :meth:`ReadAhead.beside` runs the tailer's work and, in the same task group, a reader
  that issues ``getMore`` after ``getMore`` on the cursor and queues the replies. The
  events of a queued reply are decoded (:func:`~cdc.events.decode_raw`, yielding to
  the event loop every few hundred events) in a task of their own while the next
  ``getMore`` is out, so the server produces the next reply while this one is decoded,
  and decoding runs while the work waits on PostgreSQL. The reader stops after a reply
  shorter than requested (the server had nothing more queued), once the queue holds
  ``cap`` events (memory stays bounded: one batch being applied, one accumulating, at
  most ``cap`` queued), when the cursor is to be dropped, or once the work is done —
  never in the middle of a ``getMore``: an abandoned ``getMore`` would leave the
  cursor's position unknown.
* The tailer takes queued replies in order (:meth:`ReadAhead.pop`) before it reads
  again. Replies are only *read* ahead: what is committed, and the checkpoint with it,
  is decided by the accumulator exactly as for a reply read in place, so exactly-once
  effect, whole transactions and resumability do not depend on the read-ahead.
* :meth:`ReadAhead.clear` forgets the queue when the cursor is dropped (a reopen starts
  from the committed checkpoint; the queued replies are read again from there).

A read that fails because an event is too large to return (``BSONObjectTooLarge``) is
queued as the error itself, in its place, and ends the reader; any other error ends
the step (the tailer retries it from the checkpoint).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
from pymongo.errors import OperationFailure

from cdc.cursor import ChangeStreamCursor, Reply
from cdc.errors import first_failure
from cdc.events import ChangeEvent, decode_raw

T = TypeVar("T")

TOO_LARGE_CODES = frozenset({10334, 17419})  # BSONObjectTooLarge, "too large to return"
YIELD_EVERY = 256
"""Events decoded between yields to the event loop."""


class Ahead:
    """One reply read ahead: the reply (or its too-large failure) and its events decoded
    by :func:`~cdc.events.decode_raw` (``None`` where that declines an event)."""

    __slots__ = ("decoded", "quick", "reply")

    def __init__(self, reply: Reply | OperationFailure,
                 decoded: list[ChangeEvent | None] | None, quick: bool) -> None:
        self.reply = reply
        self.decoded = decoded
        self.quick = quick
        """Read without waiting for new events (a short wait, not ``max_await_ms``)."""


async def predecode(reply: Reply) -> list[ChangeEvent | None]:
    """The fast-path decoding of every event of ``reply`` (``None`` where declined)."""
    out: list[ChangeEvent | None] = []
    for n, raw in enumerate(reply.events):
        if n % YIELD_EVERY == YIELD_EVERY - 1:
            await anyio.lowlevel.checkpoint()
        out.append(decode_raw(raw))
    return out


class ReadAhead:
    """The queue of replies read ahead on the tailer's cursor; see the module docstring."""

    def __init__(self, cap: int, max_await_ms: int) -> None:
        self.cap = cap
        self._max_await_ms = max_await_ms
        self._queue: deque[Ahead] = deque()
        self._events = 0

    def __bool__(self) -> bool:
        return bool(self._queue)

    @property
    def events(self) -> int:
        """Events queued."""
        return self._events

    @property
    def last(self) -> Ahead | None:
        """The reply queued last (``None`` when the queue is empty)."""
        return self._queue[-1] if self._queue else None

    def pop(self) -> Ahead | None:
        if not self._queue:
            return None
        item = self._queue.popleft()
        if isinstance(item.reply, Reply):
            self._events -= len(item.reply.events)
        return item

    def clear(self) -> None:
        self._queue.clear()
        self._events = 0

    async def beside(self, cursor: ChangeStreamCursor, work: Callable[[], Awaitable[T]], *,
                     first_wait_ms: int, requested: int, keep_going: bool,
                     stop: Callable[[], bool]) -> T:
        """Run ``work`` while replies are read ahead on ``cursor`` and queued.

        The first ``getMore`` waits ``first_wait_ms`` for events; later ones (only while
        ``keep_going`` and each reply came back full) 1 ms. ``stop()`` is asked
        before every ``getMore`` after the first (e.g. the cursor is to be dropped).
        Errors of ``work`` or of the reader end both; the first one is raised."""
        finished = anyio.Event()
        result: list[T] = []

        async def decode(item: Ahead, reply: Reply) -> None:
            item.decoded = await predecode(reply)

        async def reader(tg: anyio.abc.TaskGroup) -> None:
            wait = first_wait_ms
            while True:
                try:
                    reply = await cursor.next_batch(wait)
                except OperationFailure as exc:
                    if (exc.code or 0) not in TOO_LARGE_CODES:
                        raise
                    self._queue.append(Ahead(exc, None, False))
                    return
                item = Ahead(reply, None, wait < self._max_await_ms)
                self._queue.append(item)
                self._events += len(reply.events)
                # Decoded while the next getMore is out: the server produces the next
                # reply while this one is decoded.
                tg.start_soon(decode, item, reply)
                if (not keep_going or len(reply.events) < requested or not cursor.alive
                        or self._events >= self.cap or finished.is_set() or stop()):
                    return
                wait = 1  # more is queued on the server: no wait

        async def run_work() -> None:
            try:
                result.append(await work())
            finally:
                finished.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader, tg)
                await run_work()
        except BaseExceptionGroup as group:
            raise first_failure(group) from None
        return result[0]
