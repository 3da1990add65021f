"""The tailer under injected faults: closed connections, error codes, killed PostgreSQL
backends, and a stream whose history the oplog no longer holds."""

from __future__ import annotations

import functools
import uuid
from typing import Any

import anyio
import asyncpg
import bson
import psycopg
import pytest
from psycopg import sql
from pymongo import AsyncMongoClient

from cdc import metrics
from cdc.batch import Batch, Checkpoint
from cdc.errors import HistoryLostError, TargetUnavailable, is_retriable
from cdc.retry import RetryPolicy, call_with_retry
from cdc.sink.sink import asyncpg_params
from cdc.state import StreamState
from cdc.stream import StreamConfig, Tailer
from cdc.types import Phase
from ops.sandbox import start_sandbox
from tests.integration.test_stream import catch_up
from tests.support.tailing import CONTROL, checkpoint_time, differences, open_sink, pg_connect
from tests.support.workload import run_workload

APP = "tailer-under-test"
CONFIG = StreamConfig(batch_max_events=100, batch_max_ms=50, max_await_ms=50,
                      retry=RetryPolicy(initial_s=0.01, max_s=0.1))


def unique_db() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def retries() -> float:
    value = metrics.RETRIES.labels("main")._value.get()
    return float(value)


def tailer_client(mongo_uri: str) -> AsyncMongoClient[Any]:
    # Polling monitor with a short interval: after a "node is recovering" error the
    # driver marks the server unknown and waits for the monitor's next check.
    return AsyncMongoClient(mongo_uri, appname=APP, serverMonitoringMode="poll",
                            heartbeatFrequencyMS=500)


async def fail_point(client: AsyncMongoClient[Any], mode: Any, **data: Any) -> None:
    await client.admin.command({"configureFailPoint": "failCommand", "mode": mode,
                                "data": {"appName": APP, **data}})


async def tail_through(mongo_uri: str, pg_dsn: str, namespaces: list[str], include: list[str],
                       inject: Any, *, ops: int = 300, during: Any = None) -> None:
    """``inject(client, sink)`` injects faults, then the tailer starts and a workload runs
    (``during(client, sink)`` instead when given); then the tailer must catch up and
    PostgreSQL equal MongoDB."""
    writer: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    reader = tailer_client(mongo_uri)
    try:
        async with open_sink(pg_dsn) as sink:
            tailer = Tailer(client=reader, sink=sink, include=include, config=CONFIG)
            async with anyio.create_task_group() as tg:
                await inject(writer, sink)
                await tg.start(tailer.run)
                if during is None:
                    await run_workload(writer, namespaces, ops=ops, seed=5)
                else:
                    await during(writer, sink)
                await catch_up(tailer, writer)
                tg.cancel_scope.cancel()
        assert await differences(writer, pg_dsn, namespaces) == []
    finally:
        await fail_point(writer, "off")
        await writer.close()
        await reader.close()


@pytest.mark.parametrize("data", [
    {"failCommands": ["getMore"], "closeConnection": True},
    {"failCommands": ["getMore"], "errorCode": 11602},
    {"failCommands": ["getMore"], "errorCode": 2,
     "errorLabels": ["ResumableChangeStreamError"]},
    {"failCommands": ["getMore", "aggregate"], "errorCode": 6},
    {"failCommands": ["aggregate"], "closeConnection": True},
    {"failCommands": ["getMore"], "errorCode": 237},
    {"failCommands": ["getMore"], "errorCode": 11601},
], ids=["getMore-closed", "getMore-11602", "getMore-label", "aggregate-6", "aggregate-closed",
        "getMore-237-cursor-killed", "getMore-11601-interrupted"])
def test_stream_resumes_after_transient_source_failures(
        mongo_uri: str, pg_dsn: str, data: dict[str, Any]) -> None:
    db = unique_db()
    before = retries()

    async def inject(client: AsyncMongoClient[Any], sink: Any) -> None:
        await fail_point(client, {"times": 3}, **data)

    anyio.run(tail_through, mongo_uri, pg_dsn, [f"{db}.a", f"{db}.b"], [f"{db}.*"], inject)
    assert retries() >= before + 1


def data_plane_pids(sink: Any) -> list[int]:
    """Server PIDs of the sink's asyncpg pool (its data plane) right now."""
    pids = []
    for holder in sink._pool._holders:
        con = holder._con
        if con is not None and not con.is_closed():
            pids.append(con.get_server_pid())
    return pids


def test_stream_survives_terminated_postgres_backends_during_apply(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()
    before = retries()

    async def nothing(client: AsyncMongoClient[Any], sink: Any) -> None:
        pass

    async def during(client: AsyncMongoClient[Any], sink: Any) -> None:
        async def killer() -> None:
            conn = await pg_connect(pg_dsn)
            try:
                for _ in range(8):
                    await anyio.sleep(0.1)
                    await conn.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[])"
                                       " AS pid", data_plane_pids(sink))
            finally:
                await conn.close()

        async with anyio.create_task_group() as tg:
            tg.start_soon(killer)
            await run_workload(client, [f"{db}.a", f"{db}.b"], ops=300, seed=3)

    anyio.run(functools.partial(tail_through, mongo_uri, pg_dsn, [f"{db}.a", f"{db}.b"],
                                [f"{db}.*"], nothing, during=during))
    assert retries() >= before + 1


@pytest.mark.sandbox_only
def test_resuming_after_the_oplog_rolled_past_the_checkpoint_raises_history_lost(
        pg_dsn: str) -> None:
    db = unique_db()
    handle = start_sandbox(port=0, oplog_max_entries=100)

    async def main() -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(handle.uri)
        coll = client[db]["c"]
        async with open_sink(pg_dsn) as sink:
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=CONFIG)
            await tailer.run_once()
            await coll.insert_many([{"_id": i} for i in range(10)])
            await catch_up(tailer, client, step=True)
            await tailer.close()
            stale = await checkpoint_time(pg_dsn)
            for i in range(5):  # far more than the oplog keeps
                await coll.insert_many([{"_id": f"{i}-{j}"} for j in range(60)])
            lost_before = metrics.HISTORY_LOST.labels("main")._value.get()
            again = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=CONFIG)
            with pytest.raises(HistoryLostError):
                await again.run()
            assert metrics.HISTORY_LOST.labels("main")._value.get() == lost_before + 1
            assert await checkpoint_time(pg_dsn) == stale  # never jumped ahead
            state = StreamState(sink._pool, CONTROL)
            await state.set_phase(Phase.RESYNC_REQUIRED, "change stream history lost")
            conn = await pg_connect(pg_dsn)
            try:
                row = await conn.fetchrow(f"SELECT phase, reason FROM {CONTROL}.phase")  # noqa: S608
            finally:
                await conn.close()
            assert row is not None and row["phase"] == "resync_required"
            # A fresh start (what a resync does) streams again from the current time.
            fresh = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=CONFIG,
                           start_fresh=True)
            await fresh.run_once()
            await coll.insert_one({"_id": "after-resync"})
            await catch_up(fresh, client, step=True)
            await fresh.close()
        await client.close()

    try:
        anyio.run(main)
    finally:
        handle.stop()


def test_a_too_large_error_when_no_event_is_too_large_dead_letters_nothing(
        mongo_uri: str, pg_dsn: str) -> None:
    """An injected 10334 on a getMore makes the tailer re-read from its checkpoint one
    event per reply; a normal event is never blamed for a failure."""
    db = unique_db()
    ns = f"{db}.c"

    async def main() -> None:
        writer: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
        reader = tailer_client(mongo_uri)
        coll = writer[db]["c"]
        try:
            async with open_sink(pg_dsn) as sink:
                tailer = Tailer(client=reader, sink=sink, include=[ns], config=CONFIG)
                await tailer.run_once()
                await coll.insert_one({"_id": 1, "v": "big"})
                await fail_point(writer, {"times": 1}, failCommands=["getMore"],
                                 errorCode=10334)
                await coll.insert_one({"_id": 2, "v": "small"})
                await catch_up(tailer, writer, step=True)
                await tailer.close()
            conn = await pg_connect(pg_dsn)
            try:
                letters = await conn.fetch(
                    f"SELECT namespace, reason, resolved_at FROM {CONTROL}.dead_letters")  # noqa: S608
            finally:
                await conn.close()
            # Re-read one event per reply, both events fit: the failure pointed at no
            # event, so none is dead-lettered (real oversized events: test_stream_large).
            assert letters == []
            assert await differences(writer, pg_dsn, [ns]) == []
        finally:
            await fail_point(writer, "off")
            await writer.close()
            await reader.close()

    anyio.run(main)


@pytest.mark.sandbox_only
def test_a_checkpoint_token_the_server_does_not_know_raises_history_lost(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()

    async def main() -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
        async with open_sink(pg_dsn) as sink:
            await sink.apply(Batch([], Checkpoint("main", bson.encode({"_data": "bogus"}), 1)))
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=CONFIG)
            with pytest.raises(HistoryLostError):
                await tailer.run()
            assert await checkpoint_time(pg_dsn) == 1
        await client.close()

    anyio.run(main)


def test_too_many_connections_while_reconnecting_is_retried_not_fatal(
        mongo_uri: str, pg_dsn: str) -> None:
    """SQLSTATE 53300 when the pool reconnects is transient: the step fails with a
    retriable error, and once connection slots are free again the stream catches up."""
    db = unique_db()
    role = f"r{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as su:
        dbname = su.info.dbname
        su.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 2").format(
            sql.Identifier(role)))
        su.execute(sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(
            sql.Identifier(dbname), sql.Identifier(role)))
        su.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(role)))
    role_dsn = psycopg.conninfo.make_conninfo(pg_dsn, user=role, password="")

    async def main() -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
        coll = client[db]["c"]
        try:
            async with open_sink(role_dsn) as sink:
                tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=CONFIG)
                await tailer.run_once()
                await coll.insert_one({"_id": 1})
                await catch_up(tailer, client, step=True)
                with psycopg.connect(pg_dsn, autocommit=True) as su:
                    su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                               " WHERE usename = %s", (role,))
                blockers = [psycopg.connect(role_dsn) for _ in range(2)]
                try:
                    await coll.insert_one({"_id": 2})
                    with pytest.raises(TargetUnavailable) as failed:
                        with anyio.fail_after(30):
                            while True:
                                await tailer.run_once()
                    assert is_retriable(failed.value)
                finally:
                    for blocker in blockers:
                        blocker.close()
                await tailer.close()
                await call_with_retry(CONFIG.retry, functools.partial(
                    catch_up, tailer, client, step=True))
                await tailer.close()
            assert await differences(client, pg_dsn, [f"{db}.c"]) == []
        finally:
            await client.close()

    anyio.run(main)


class _ApplyFails:
    """The real sink; while ``down`` its applies fail as with PostgreSQL unreachable."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.pool, self.control_schema, self.down = inner, inner._pool, CONTROL, False

    async def apply(self, batch: Batch) -> Any:
        return await (await self.stage(batch)).commit()

    async def stage(self, batch: Batch) -> Any:
        if self.down:
            raise TargetUnavailable("injected: PostgreSQL unreachable")
        return await self.inner.stage(batch)

    async def load_checkpoint(self, stream: str) -> Any:
        return await self.inner.load_checkpoint(stream)


def test_lag_gauge_keeps_growing_while_applies_fail_and_are_retried(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()
    config = StreamConfig(batch_max_ms=50, max_await_ms=50, lag_interval_ms=100,
                          retry=RetryPolicy(initial_s=0.01, max_s=0.05))

    def gauge() -> float:
        return float(metrics.LAG.labels("lag-under-failure")._value.get())

    async def main() -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
        coll = client[db]["c"]
        try:
            async with open_sink(pg_dsn) as real:
                sink = _ApplyFails(real)
                tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=config,
                                stream_name="lag-under-failure")
                async with anyio.create_task_group() as tg:
                    await tg.start(tailer.run)
                    await coll.insert_one({"_id": 0})
                    await catch_up(tailer, client)
                    sink.down = True
                    applied = tailer.last_applied
                    with anyio.fail_after(15):
                        i = 0
                        while gauge() < 2:
                            i += 1
                            await coll.insert_one({"_id": i})
                            await anyio.sleep(0.25)
                    assert tailer.last_applied == applied  # nothing applied meanwhile
                    sink.down = False
                    await catch_up(tailer, client)
                    tg.cancel_scope.cancel()
            assert await differences(client, pg_dsn, [f"{db}.c"]) == []
        finally:
            await client.close()

    anyio.run(main)


def test_capped_position_lost_on_getmore_raises_history_lost_and_keeps_the_checkpoint(
        mongo_uri: str, pg_dsn: str) -> None:
    """136 (CappedPositionLost): the oplog under the cursor was overwritten — history
    lost, never retried into a silent jump ahead."""
    db = unique_db()

    async def main() -> None:
        writer: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
        reader = tailer_client(mongo_uri)
        try:
            async with open_sink(pg_dsn) as sink:
                tailer = Tailer(client=reader, sink=sink, include=[f"{db}.c"], config=CONFIG)
                await tailer.run_once()
                await writer[db]["c"].insert_one({"_id": 1})
                await catch_up(tailer, writer, step=True)
                before = await checkpoint_time(pg_dsn)
                await fail_point(writer, {"times": 1}, failCommands=["getMore"],
                                 errorCode=136)
                await writer[db]["c"].insert_one({"_id": 2})
                with pytest.raises(HistoryLostError):
                    await tailer.run()
                assert await checkpoint_time(pg_dsn) == before
        finally:
            await fail_point(writer, "off")
            await writer.close()
            await reader.close()

    anyio.run(main)


def test_a_closed_control_pool_stops_the_tailer_instead_of_retrying_forever(
        mongo_uri: str, pg_dsn: str) -> None:
    """At shutdown the pool is closed: "pool is closed" is no transient failure."""

    async def main() -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
        try:
            async with open_sink(pg_dsn) as sink:
                pool = await asyncpg.create_pool(min_size=1, max_size=1,
                                                 **asyncpg_params(pg_dsn))
                await pool.close()
                state = StreamState(pool, CONTROL)
                forever = StreamConfig(batch_max_ms=50, max_await_ms=50,
                                       retry=RetryPolicy(initial_s=0.01, max_s=0.05))
                tailer = Tailer(client=client, sink=sink, include=[f"{unique_db()}.c"],
                                config=forever, state=state)
                with anyio.fail_after(10), pytest.raises(asyncpg.InterfaceError):
                    await tailer.run()
        finally:
            await client.close()

    anyio.run(main)
