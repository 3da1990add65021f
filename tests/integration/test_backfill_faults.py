"""The backfill's retry paths under PostgreSQL faults: a lost control connection (the
chunk table's) is a transient failure wherever it shows, never the end of the copy."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import psycopg
import pytest
from pymongo import AsyncMongoClient

from backfill.config import BackfillConfig
from cdc.batch import Batch
from cdc.types import Namespace
from tests.integration.backfill_support import HookedSink, chunk_rows, compare, pipeline

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
