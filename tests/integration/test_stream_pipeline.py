"""Staged batches: the next batch is staged while the one before it commits.

The tailer's flush stages a batch (:meth:`cdc.sink.Sink.stage`: its transaction opened
on a connection of its own, its upserts COPYed into staging) while the batch staged
before it commits, and commits it later, in order. These tests pin down that the two
overlap, that batches commit in stream order whatever happens, and that a failed commit
rolls back the batch staged beside it instead of letting it commit past a gap.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import time
import uuid
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql

from cdc.batch import Batch, Checkpoint
from cdc.errors import Mongo2pgError, StreamFenced, TargetUnavailable
from cdc.retry import RetryPolicy
from cdc.stream import StreamConfig, Tailer
from tests.integration.sink_support import rows, upsert
from tests.integration.test_stream import catch_up, server_time
from tests.support.tailing import CONTROL, differences, mongo, open_sink

Entry = tuple[str, int | None, int | None]
"""(what happened, the batch's ``after``, its checkpoint's cluster time)."""


class OrderedSink:
    """The real sink; logs when each batch's staging starts and when it commits or is
    rolled back, and can fail a commit that begins while another batch is staged."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.pool, self.control_schema = inner, inner._pool, CONTROL
        self.log: list[Entry] = []
        self.staging = 0
        self.open: set[int] = set()
        self.fail_overlapped = False
        self.beside = 0
        """Batches whose staging started while one staged before had not committed."""

    async def apply(self, batch: Batch) -> Any:
        return await (await self.stage(batch)).commit()

    async def stage(self, batch: Batch) -> Any:
        self.log.append(("stage", *_where(batch)))
        if self.open:
            self.beside += 1  # a batch staged before this one has not committed yet
        self.staging += 1
        try:
            staged = _Logged(self, await self.inner.stage(batch), batch)
        except BaseException:
            self.log.append(("stage-undone", *_where(batch)))  # rolled back by the sink
            raise
        finally:
            self.staging -= 1
        self.open.add(id(staged))
        return staged

    async def load_checkpoint(self, stream: str) -> Any:
        return await self.inner.load_checkpoint(stream)


class _Logged:
    def __init__(self, sink: OrderedSink, staged: Any, batch: Batch) -> None:
        self.sink, self.staged, self.batch = sink, staged, batch

    async def commit(self) -> Any:
        sink = self.sink
        overlapped = sink.staging > 0 or len(sink.open) > 1
        try:
            if sink.fail_overlapped and overlapped and self.batch.changes:
                sink.fail_overlapped = False
                await self.staged.abort()
                sink.log.append(("failed", *_where(self.batch)))
                raise TargetUnavailable("injected: connection lost while committing")
            result = await self.staged.commit()
        finally:
            sink.open.discard(id(self))
        sink.log.append(("committed", *_where(self.batch)))
        return result

    async def abort(self) -> None:
        if id(self) in self.sink.open:
            self.sink.open.discard(id(self))
            self.sink.log.append(("aborted", *_where(self.batch)))
        await self.staged.abort()


def _where(batch: Batch) -> tuple[int | None, int | None]:
    return batch.after, batch.checkpoint.cluster_time if batch.checkpoint else None


def committed_in_order(log: list[Entry]) -> bool:
    """Every committed batch continues from the checkpoint committed before it."""
    last: int | None = None
    for what, after, at in log:
        if what != "committed":
            continue
        if after is not None and last is not None and after != last:
            return False
        last = at if at is not None else last
    return True


CONFIG = StreamConfig(batch_max_events=40, batch_max_ms=50, max_await_ms=50,
                      retry=RetryPolicy(initial_s=0.01, max_s=0.05))


async def _backlog(client: Any, db: str, n: int) -> None:
    coll = client[db]["c"]
    await coll.insert_many([{"_id": i, "v": 0} for i in range(n)])
    for round_ in range(3):
        for a in range(0, n, 50):
            await coll.update_many({"_id": {"$gte": a, "$lt": a + 50}},
                                   {"$set": {"v": round_ + 1}})
    await coll.delete_many({"_id": {"$in": list(range(0, n, 7))}})


def test_the_next_batch_is_staged_while_the_one_before_commits_and_commits_after_it(
        mongo_uri: str, pg_dsn: str) -> None:
    db = f"t{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        client = mongo(mongo_uri)
        async with open_sink(pg_dsn) as real:
            sink = OrderedSink(real)
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=CONFIG)
            await tailer.run_once()
            await _backlog(client, db, 400)
            await catch_up(tailer, client, step=True)
            await tailer.close()
            log = sink.log
            # Batches started staging before the batch staged before them had committed.
            assert sink.beside >= 3
            assert committed_in_order(log)
            assert not [e for e in log if e[0] == "aborted"]
            assert await differences(client, pg_dsn, [f"{db}.c"]) == []
        await client.close()

    anyio.run(main)


def test_a_failed_commit_rolls_back_the_batch_staged_beside_it(
        mongo_uri: str, pg_dsn: str) -> None:
    db = f"t{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        client = mongo(mongo_uri)
        async with open_sink(pg_dsn) as real:
            sink = OrderedSink(real)
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=CONFIG)
            async with anyio.create_task_group() as tg:
                await tg.start(tailer.run)
                sink.fail_overlapped = True
                await _backlog(client, db, 400)
                await catch_up(tailer, client)
                tg.cancel_scope.cancel()
            log = sink.log
            failed = [n for n, e in enumerate(log) if e[0] == "failed"]
            assert failed, "no commit ran beside a staged batch"
            # The batch staged beside the failed commit (or still staging) was rolled
            # back before anything else committed.
            after_failure = log[failed[0] + 1:]
            undone = [n for n, e in enumerate(after_failure)
                      if e[0] in ("aborted", "stage-undone")]
            committed = [n for n, e in enumerate(after_failure) if e[0] == "committed"]
            assert undone and committed and undone[0] < committed[0]
            assert committed_in_order(log)
            assert real.pool.get_size() == real.pool.get_idle_size()
            assert await differences(client, pg_dsn, [f"{db}.c"]) == []
        await client.close()

    anyio.run(main)


def test_a_staged_batch_holds_no_lock_and_commits_only_after_the_batch_before_it(
        pg_dsn: str) -> None:
    async def main() -> None:
        async with open_sink(pg_dsn) as sink:
            await sink.apply(Batch([], Checkpoint("s", None, 10)))
            first = await sink.stage(Batch([upsert(1, 11), upsert(2, 12)],
                                           Checkpoint("s", b"a", 12), after=10))
            # Staged while the first is open: staging takes no lock.
            second = await sink.stage(Batch([upsert(3, 13)], Checkpoint("s", b"b", 13),
                                            after=12))
            assert rows(pg_dsn) == {}
            # Committing the second before the first would leave a gap: refused, and
            # nothing of it lands.
            with pytest.raises(StreamFenced):
                await second.commit()
            await first.commit()
            assert sorted(v for _, v in rows(pg_dsn).values()) == [11, 12]
            third = await sink.stage(Batch([upsert(3, 13)], Checkpoint("s", b"b", 13),
                                           after=12))
            aborted = await sink.stage(Batch([upsert(4, 14)], Checkpoint("s", b"c", 14),
                                             after=13))
            await aborted.abort()
            await aborted.abort()  # a second abort changes nothing
            await third.commit()
            assert sorted(v for _, v in rows(pg_dsn).values()) == [11, 12, 13]
            with psycopg.connect(pg_dsn) as conn:
                stored = conn.execute(sql.SQL(
                    "SELECT cluster_time FROM {}.checkpoints WHERE stream = 's'"
                ).format(sql.Identifier(CONTROL))).fetchone()
            assert stored == (13,)
            # Every connection went back to the pool.
            assert sink.pool.get_size() == sink.pool.get_idle_size()

    anyio.run(main)


def test_rolling_back_a_staged_batch_gives_up_on_a_server_that_stops_answering(
        pg_dsn: str) -> None:
    """The rollback of a staged batch runs shielded (cleanup after a cancellation, e.g.
    the tailer's bounded cleanup when it is stopped): it must bound itself, or a stalled
    PostgreSQL wedges the caller past every deadline. Dropping the connection is a
    rollback too."""

    async def main() -> None:
        async with open_sink(pg_dsn) as sink:
            staged = await sink.stage(Batch([upsert(1, 11)], Checkpoint("s", b"a", 11)))
            pid = staged.conn.get_server_pid()
            os.kill(pid, signal.SIGSTOP)  # the session's server process stops answering
            try:
                async with anyio.create_task_group() as tg:

                    async def wake_later() -> None:
                        await anyio.sleep(12)
                        os.kill(pid, signal.SIGCONT)

                    tg.start_soon(wake_later)
                    began = time.monotonic()
                    with anyio.move_on_after(1):  # a caller's deadline
                        await staged.abort()
                    took = time.monotonic() - began
                    tg.cancel_scope.cancel()
            finally:
                os.kill(pid, signal.SIGCONT)
            assert took < 10, f"the rollback waited {took:.1f} s for a stalled server"
            assert rows(pg_dsn) == {}
            with anyio.fail_after(10):
                assert await sink.apply(Batch([upsert(2, 12)])) is not None
            assert len(rows(pg_dsn)) == 1  # the pool serves on (a new connection)
            assert sink.pool.get_size() == sink.pool.get_idle_size()

    anyio.run(main)


def test_a_staged_batch_rolled_back_never_reports_a_commit(pg_dsn: str) -> None:
    """After its rollback (a refused or failed commit, an abort, the sink closing) a
    staged batch's commit must fail, not return a result as if it had committed: the
    tailer takes a returned commit as its checkpoint and last applied time."""

    async def main() -> None:
        async with open_sink(pg_dsn) as sink:
            await sink.apply(Batch([], Checkpoint("s", None, 10)))
            ahead = await sink.stage(Batch([upsert(1, 13)], Checkpoint("s", b"b", 13),
                                           after=12))
            try:
                await ahead.commit()
            except StreamFenced:
                pass
            refused_again = False
            try:
                await ahead.commit()  # e.g. a caller retrying it
            except Mongo2pgError:
                refused_again = True
            closed = await sink.stage(Batch([upsert(2, 11)], Checkpoint("s", b"a", 11),
                                            after=10))
        # The sink closed: the batch still staged was rolled back.
        refused_after_close = False
        try:
            await closed.commit()
        except Mongo2pgError:
            refused_after_close = True
        assert rows(pg_dsn) == {}
        assert refused_again, "a refused batch reported a commit when asked again"
        assert refused_after_close, "a batch rolled back by close() reported a commit"

    anyio.run(main)


# A cancel scope cancels again at every await until it exits, so the driver's own
# cleanup of a connection interrupted mid-command (closing its socket) is interrupted
# too; the socket is then closed by the garbage collector, run before the test ends.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_steps_cancelled_from_outside_at_any_point_lose_nothing(
        mongo_uri: str, pg_dsn: str) -> None:
    """A step cancelled by its caller (a deadline around ``run_once``) may leave a
    ``getMore`` abandoned mid-flight and a batch staged: the next step must not read on
    from that cursor as if nothing happened (before the fix this failed 3 runs of 3; in
    one round 103 of the 600 documents differed)."""

    async def main() -> None:
        client = mongo(mongo_uri)
        async with open_sink(pg_dsn) as sink:
            for seed in (7, 8, 9, 10):
                db = f"t{uuid.uuid4().hex[:10]}"
                tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"],
                                config=CONFIG)
                await tailer.run_once()
                await _backlog(client, db, 600)
                target = await server_time(client)
                rnd = random.Random(seed)
                with anyio.fail_after(60):
                    while tailer.last_applied < target:
                        with anyio.move_on_after(rnd.uniform(0.003, 0.08)):
                            await tailer.run_once()
                await tailer.close()
                assert await differences(client, pg_dsn, [f"{db}.c"]) == [], seed
                assert sink.pool.get_size() == sink.pool.get_idle_size()
        await client.close()

    anyio.run(main)
    gc.collect()
