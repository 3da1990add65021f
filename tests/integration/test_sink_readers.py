"""Read leases (cdc.sink.readers) against real PostgreSQL: deletes leave tombstones
exactly while a read of their namespace may still write, and a write whose lease has
expired is refused whole."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg import sql

from cdc.batch import Batch, Checkpoint, Op, Origin
from cdc.errors import InvariantError, ReadLeaseLost
from cdc.sink import Sink
from cdc.types import Namespace
from tests.integration.sink_support import (
    CONTROL,
    NS,
    delete,
    expire_lease,
    key_of,
    mapper_for,
    rows,
    scalar,
    tombstones,
    upsert,
)

pytestmark = pytest.mark.anyio

BACKFILL = Origin.BACKFILL
OTHER = Namespace("shop", "customers")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sink(pg_dsn: str) -> AsyncIterator[Sink]:
    s = await Sink.open(pg_dsn, CONTROL, mapper_for, max_size=2)
    try:
        yield s
    finally:
        await s.close()


def leases(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(sql.SQL(
            "SELECT namespace FROM {} ORDER BY id").format(
            sql.Identifier(CONTROL, "readers"))).fetchall()]


async def test_delete_without_live_lease_removes_the_row_and_leaves_no_tombstone(
    sink: Sink, pg_dsn: str
) -> None:
    await sink.apply(Batch([upsert(1, 10), upsert(2, 10), upsert(3, 30)]))
    # A lease on another namespace does not count.
    await sink.open_reader(OTHER, "elsewhere", 3600)
    result = await sink.apply(Batch([delete(1, 20), delete(3, 25), delete(4, 20)]))
    assert rows(pg_dsn) == {key_of(2): ({"_id": 2, "v": 10}, 10),
                            key_of(3): ({"_id": 3, "v": 30}, 30)}
    assert tombstones(pg_dsn) == {}
    assert result.of(NS, Op.DELETE).applied == 1
    assert result.of(NS, Op.DELETE).skipped == 2
    # Ties: a stream delete wins against the stored row of the same time.
    await sink.apply(Batch([delete(2, 10)]))
    assert set(rows(pg_dsn)) == {key_of(3)}


async def test_delete_while_a_lease_is_live_leaves_its_tombstone(
    sink: Sink, pg_dsn: str
) -> None:
    await sink.apply(Batch([upsert(1, 10)]))
    reader = await sink.open_reader(NS, "worker", 3600)
    await sink.apply(Batch([delete(1, 20), delete(9, 21)]))
    assert tombstones(pg_dsn) == {key_of(1): 20, key_of(9): 21}
    await sink.close_reader(reader)
    assert leases(pg_dsn) == []
    await sink.apply(Batch([upsert(5, 30)]))
    await sink.apply(Batch([delete(5, 31)]))
    assert key_of(5) not in tombstones(pg_dsn)


async def test_backfill_read_before_a_delete_never_resurrects_the_document(
    sink: Sink, pg_dsn: str
) -> None:
    """The race leases exist for: a chunk reads a document at 12, the stream deletes
    it at 15 and that delete is applied, then the chunk writes what it read."""
    await sink.apply(Batch([upsert(1, 10)]))
    reader = await sink.open_reader(NS, "worker", 3600)  # before the read's label (12)
    await sink.apply(Batch([delete(1, 15)]))
    result = await sink.apply(Batch([upsert(1, 12, origin=BACKFILL)], reader=reader))
    assert rows(pg_dsn) == {}
    assert result.of(NS, Op.UPSERT).skipped == 1


async def test_write_under_an_expired_lease_is_refused_whole(
    sink: Sink, pg_dsn: str
) -> None:
    await sink.apply(Batch([upsert(1, 10)]))
    reader = await sink.open_reader(NS, "worker", 3600)
    expire_lease(pg_dsn, reader)
    assert not await sink.renew_reader(reader)
    # Expired: the delete no longer needs a tombstone, and does not leave one ...
    await sink.apply(Batch([delete(1, 15)]))
    assert tombstones(pg_dsn) == {}
    # ... because whatever that read saw is refused, with the rest of its batch.
    with pytest.raises(ReadLeaseLost):
        await sink.apply(Batch([upsert(1, 12, origin=BACKFILL), upsert(2, 12, origin=BACKFILL)],
                               Checkpoint("main", None, 12), reader=reader))
    assert rows(pg_dsn) == {}
    assert scalar(pg_dsn, sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(CONTROL, "checkpoints"))) == 0


async def test_each_write_renews_its_lease_and_a_new_lease_clears_expired_ones(
    sink: Sink, pg_dsn: str
) -> None:
    short = await sink.open_reader(NS, "worker", 600)

    def expires() -> float:
        return float(scalar(pg_dsn, sql.SQL(
            "SELECT extract(epoch FROM expires_at - clock_timestamp()) FROM {}"
            " WHERE id = {}").format(sql.Identifier(CONTROL, "readers"), short)))

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("UPDATE {} SET expires_at = clock_timestamp()"
                             " + interval '5 seconds'").format(
            sql.Identifier(CONTROL, "readers")))
    assert expires() < 10
    await sink.apply(Batch([upsert(1, 10, origin=BACKFILL)], reader=short))
    assert expires() > 500
    assert await sink.renew_reader(short)
    stale = await sink.open_reader(OTHER, "crashed", 3600)
    expire_lease(pg_dsn, stale)
    await sink.open_reader(NS, "next", 3600)
    assert leases(pg_dsn) == [str(NS), str(NS)]


async def test_backfill_changes_without_a_lease_are_refused(sink: Sink, pg_dsn: str) -> None:
    with pytest.raises(InvariantError, match="read lease"):
        await sink.apply(Batch([upsert(1, 10), upsert(2, 10, origin=BACKFILL)]))
    assert rows(pg_dsn) == {}
