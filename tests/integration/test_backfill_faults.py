"""The backfill's retry paths under PostgreSQL faults: a lost control connection (the
chunk table's) is a transient failure wherever it shows, never the end of the copy."""

from __future__ import annotations

import gc
import uuid
import warnings
from typing import Any

import anyio
import psycopg
import psycopg.conninfo
import psycopg.sql
import pytest
from pymongo import AsyncMongoClient

from backfill.chunks import ChunkStore
from backfill.config import BackfillConfig
from backfill.worker import Backfill
from cdc.batch import Batch
from cdc.errors import TargetUnavailable
from cdc.sink.migrations import migrate_sync
from cdc.types import Namespace
from tests.integration.backfill_support import (
    CONTROL,
    ExpireFirstLease,
    HookedSink,
    Pipeline,
    chunk_rows,
    compare,
    pipeline,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def terminate(pg_dsn: str, pid: int) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as su:
        su.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_a_lost_chunk_table_connection_during_a_progress_report_does_not_end_the_backfill(
    mongo_uri: str, pg_dsn: str
) -> None:
    """The progress report runs beside the workers; the chunk table's connection is
    terminated while a batch is written, and the report is the first to use it."""
    db = f"bf_{uuid.uuid4().hex[:10]}"
    ns = Namespace(db, "c")
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    try:
        await client[db]["c"].insert_many([{"_id": i, "v": i} for i in range(60)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.c"]) as p:
            killed = False

            async def hook(batch: Batch) -> None:
                nonlocal killed
                if batch.changes and not killed:
                    killed = True
                    terminate(pg_dsn, p.store.conn.info.backend_pid)
                    await anyio.sleep(0.5)  # several reports are due meanwhile

            config = BackfillConfig(workers=1, chunk_documents=20, batch_size=10,
                                    read_batch_documents=10, progress_interval_seconds=0.1)
            bf = p.backfill(config, HookedSink(p.sink, hook))
            assert await bf.run([ns]) is True
            assert killed
            await p.caught_up()
        assert {r[2] for r in chunk_rows(pg_dsn)} == {"done"}
        assert compare(mongo_uri, pg_dsn, [ns]).mismatches == 0
    finally:
        await client.close()


def limited_role(pg_dsn: str) -> tuple[str, str]:
    """A login role that may use the control schema; returns (role, its DSN)."""
    role = f"r{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as su:
        ident = psycopg.sql.Identifier(role)
        su.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        su.execute(psycopg.sql.SQL(
            "GRANT USAGE ON SCHEMA {s} TO {r}; "
            "GRANT ALL ON ALL TABLES IN SCHEMA {s} TO {r}; "
            "GRANT ALL ON ALL SEQUENCES IN SCHEMA {s} TO {r}").format(
                s=psycopg.sql.Identifier(CONTROL), r=ident))
    return role, psycopg.conninfo.make_conninfo(pg_dsn, user=role, password="")


def connection_limit(pg_dsn: str, role: str, limit: int) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as su:
        su.execute(psycopg.sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
            psycopg.sql.Identifier(role), psycopg.sql.Literal(limit)))


async def copy_while_refused(p: Pipeline, pg_dsn: str, ns: Namespace, seconds: float) -> None:
    """Copy ``ns`` (one worker) with a chunk table whose connection is cut during the
    first batch and whose reconnects are refused for ``seconds`` (no connection allowed
    for its role meanwhile); the copy must end all the same."""
    role, role_dsn = limited_role(pg_dsn)
    store = await ChunkStore.connect(role_dsn, CONTROL, "limited", lease_seconds=30)
    refused = anyio.Event()

    async def hook(batch: Batch) -> None:
        if batch.changes and not refused.is_set():
            connection_limit(pg_dsn, role, 0)
            terminate(pg_dsn, store.conn.info.backend_pid)
            refused.set()

    config = BackfillConfig(workers=1, chunk_documents=20, batch_size=10,
                            read_batch_documents=10)
    bf = Backfill(client=p.client, sink=HookedSink(p.sink, hook), store=store,
                  config=config, stream_start=p.start)

    async def allow_later() -> None:
        await refused.wait()
        await anyio.sleep(seconds)
        connection_limit(pg_dsn, role, -1)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(allow_later)
            assert await bf.run([ns]) is True
    finally:
        await store.close()


async def test_a_chunk_table_connection_that_cannot_be_reopened_yet_is_retried_not_fatal(
    mongo_uri: str, pg_dsn: str
) -> None:
    """The chunk table's connection is lost, and reopening it fails for a while (the
    server refuses new connections: too many for the role): the workers back off and
    retry, and the copy ends once connections are accepted again."""
    db = f"bf_{uuid.uuid4().hex[:10]}"
    ns = Namespace(db, "c")
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    try:
        await client[db]["c"].insert_many([{"_id": i, "v": i} for i in range(60)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.c"]) as p:
            await copy_while_refused(p, pg_dsn, ns, 1.5)  # several reconnects refused
            await p.caught_up()
        assert {r[2] for r in chunk_rows(pg_dsn)} == {"done"}
        assert compare(mongo_uri, pg_dsn, [ns]).mismatches == 0
    finally:
        await client.close()


async def test_a_stop_requested_while_a_worker_backs_off_ends_the_run_at_once(
    mongo_uri: str, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The chunk table is unreachable (connections refused), so the worker backs off
    longer after each failure; a graceful stop (SIGTERM) does not wait the backoff out,
    which after a long outage outlasts the daemon's drain timeout (exit code 1)."""
    db = f"bf_{uuid.uuid4().hex[:10]}"
    ns = Namespace(db, "c")
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    try:
        await client[db]["c"].insert_many([{"_id": i, "v": i} for i in range(60)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.c"]) as p:
            role, role_dsn = limited_role(pg_dsn)
            store = await ChunkStore.connect(role_dsn, CONTROL, "limited", lease_seconds=30)

            async def hook(batch: Batch) -> None:
                if batch.changes and store.conn.info.backend_pid and not store.conn.closed:
                    connection_limit(pg_dsn, role, 0)
                    terminate(pg_dsn, store.conn.info.backend_pid)

            config = BackfillConfig(workers=1, chunk_documents=20, batch_size=10,
                                    read_batch_documents=10)
            bf = Backfill(client=p.client, sink=HookedSink(p.sink, hook), store=store,
                          config=config, stream_start=p.start)

            def attempts() -> int:
                """The most consecutive failures a worker task has had."""
                return max([r.__dict__.get("fields", {}).get("attempt", 0)
                            for r in caplog.records
                            if r.getMessage() == "backfill step failed; retrying"],
                           default=0)

            stopped: list[float] = []

            async def stop_during_a_long_backoff() -> None:
                while attempts() < 4:  # noqa: ASYNC110 - polled by design
                    await anyio.sleep(0.01)
                stopped.append(anyio.current_time())
                bf.request_stop()  # a worker sleeps 3.2 s now

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stop_during_a_long_backoff)
                    with anyio.fail_after(20):
                        assert await bf.run([ns]) is False
                    took = anyio.current_time() - stopped[0]
            finally:
                connection_limit(pg_dsn, role, -1)
                await store.close()
        assert took < 1.5, f"the stop waited {took:.2f} s for a backoff"
    finally:
        await client.close()


async def test_a_stop_requested_while_a_worker_waits_for_the_throttle_hands_its_chunk_back(
    mongo_uri: str, pg_dsn: str
) -> None:
    """A throttled batch may wait longer than the daemon's drain timeout (batch size over
    rate: 10,000 documents at 500/s wait 20 s); a graceful stop ends that wait, and the
    chunk goes back to the pool with nothing more written."""
    db = f"bf_{uuid.uuid4().hex[:10]}"
    ns = Namespace(db, "c")
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    try:
        await client[db]["c"].insert_many([{"_id": i, "v": i} for i in range(300)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.c"]) as p:
            written = anyio.Event()

            async def hook(batch: Batch) -> None:
                if batch.changes:
                    written.set()

            # One chunk (300 documents, batches of 200) at 100 documents per second: the
            # first batch goes at once (the burst), the last one waits 2 s.
            config = BackfillConfig(workers=1, chunk_documents=1000, batch_size=200,
                                    read_batch_documents=100, throttle_docs_per_second=100)
            bf = p.backfill(config, HookedSink(p.sink, hook))
            stopped: list[float] = []

            async def stop_after_the_first_batch() -> None:
                await written.wait()
                await anyio.sleep(0.3)
                stopped.append(anyio.current_time())
                bf.request_stop()

            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_after_the_first_batch)
                with anyio.fail_after(20):
                    assert await bf.run([ns]) is False
                took = anyio.current_time() - stopped[0]
            assert took < 1.0, f"the stop waited {took:.2f} s for the throttle"
            assert bf.copied_documents == 200  # the last batch was not written
        assert [r[2] for r in chunk_rows(pg_dsn)] == ["pending"]
    finally:
        await client.close()


async def test_a_targeted_copy_whose_read_lease_expired_reads_again(
    mongo_uri: str, pg_dsn: str
) -> None:
    """``copy_ids`` (the resync sweep, ``mongo2pg recopy --id``) under a read lease that
    expired before a write (a pause past the lease: an outage longer than it) reads the
    ids again under a new lease instead of failing the sweep, which ended the daemon."""
    db = f"bf_{uuid.uuid4().hex[:10]}"
    ns = Namespace(db, "c")
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    try:
        await client[db]["c"].insert_many([{"_id": i, "v": i} for i in range(30)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.c"]) as p:
            expire = ExpireFirstLease(pg_dsn)
            bf = p.backfill(BackfillConfig(batch_size=10),
                            sink=HookedSink(p.sink, expire))
            assert await bf.copy_ids(ns, [*range(25), 9999]) == 25
            await p.caught_up()
        assert len(expire.expired) == 1
        with psycopg.connect(pg_dsn) as conn:
            ids = {r[0] for r in conn.execute(psycopg.sql.SQL("SELECT _id FROM {}").format(
                psycopg.sql.Identifier(db, "c"))).fetchall()}
            left = conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(
                psycopg.sql.Identifier(CONTROL, "readers"))).fetchone()
        assert {str(i) for i in range(25)} <= ids  # (the stream may have applied more)
        assert left == (0,)
    finally:
        await client.close()


async def test_workers_that_find_the_chunk_table_connection_lost_reopen_it_once(
    pg_dsn: str
) -> None:
    """Every worker shares the chunk table's connection: once it is lost, the workers
    calling next reopen one connection, not one each (the others were left open and
    dropped: closed only by the garbage collector, with a ResourceWarning)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate_sync(conn, CONTROL)
    store = await ChunkStore.connect(pg_dsn, CONTROL, "test")
    try:
        terminate(pg_dsn, store.conn.info.backend_pid)
        with pytest.raises(TargetUnavailable):
            await store.remaining()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(store.remaining)
            gc.collect()
    finally:
        await store.close()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_workers_back_off_together_while_the_chunk_table_is_unreachable(
    mongo_uri: str, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One worker, connections refused for 2 s: the attempts back off (0.4, 0.8, 1.6 s),
    whichever of the worker tasks makes them (spare tasks wait for a slot, and take it
    while the one that failed sleeps)."""
    db = f"bf_{uuid.uuid4().hex[:10]}"
    ns = Namespace(db, "c")
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    try:
        await client[db]["c"].insert_many([{"_id": i, "v": i} for i in range(60)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.c"]) as p:
            await copy_while_refused(p, pg_dsn, ns, 2)
        failed = [r for r in caplog.records
                  if r.getMessage() == "backfill step failed; retrying"]
        assert 2 <= len(failed) <= 4, f"{len(failed)} attempts failed in 2 s"
        assert {r[2] for r in chunk_rows(pg_dsn)} == {"done"}
    finally:
        await client.close()
