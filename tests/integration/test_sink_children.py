"""Child tables (column mode) follow their parent document: replaced when the parent's
upsert lands, shrunk with its arrays, deleted with it, never brought back by stale rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from cdc.batch import Batch, Op, Origin
from cdc.sink import Sink
from tests.integration.sink_support import (
    CONTROL,
    NS,
    LeasedSink,
    column_mapper_for,
    delete,
    documents,
    key_of,
    upsert,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sink(pg_dsn: str) -> AsyncIterator[Sink]:
    s = await LeasedSink.open(pg_dsn, CONTROL, column_mapper_for, max_size=2)
    await s.lease_all()
    try:
        yield s
    finally:
        await s.close()


def order(i: int, c: str, n_items: int) -> dict[str, Any]:
    return {"c": c, "items": [{"n": j, "sku": f"s{j}"} for j in range(n_items)]}


def item_rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT _key, _ord, n, _m2p_version FROM shop.orders_items ORDER BY 1, 2"
        ).fetchall()


def docs(dsn: str) -> dict[bytes, tuple[dict[str, Any], int]]:
    return documents(dsn, column_mapper_for(NS))


async def test_child_rows_follow_shrinking_and_growing_arrays(sink: Sink, pg_dsn: str) -> None:
    await sink.apply(Batch([upsert(1, 10, order(1, "three", 3)),
                            upsert(2, 10, order(2, "two", 2))]))
    assert [(bytes(k), o) for k, o, _n, _v in item_rows(pg_dsn)] == [
        (key_of(1), 0), (key_of(1), 1), (key_of(1), 2), (key_of(2), 0), (key_of(2), 1)]
    await sink.apply(Batch([upsert(1, 11, order(1, "one", 1))]))
    assert docs(pg_dsn)[key_of(1)] == ({"_id": 1, **order(1, "one", 1)}, 11)
    await sink.apply(Batch([upsert(1, 12, order(1, "none", 0))]))
    assert docs(pg_dsn)[key_of(1)] == ({"_id": 1, **order(1, "none", 0)}, 12)
    await sink.apply(Batch([upsert(1, 13, order(1, "four", 4))]))
    assert docs(pg_dsn) == {key_of(1): ({"_id": 1, **order(1, "four", 4)}, 13),
                            key_of(2): ({"_id": 2, **order(2, "two", 2)}, 10)}
    assert [v for *_, v in item_rows(pg_dsn)] == [13] * 4 + [10] * 2


async def test_children_go_with_their_deleted_parent_and_stale_rows_do_not_return(
    sink: Sink, pg_dsn: str
) -> None:
    await sink.apply(Batch([upsert(1, 10, order(1, "a", 3)), upsert(2, 10, order(2, "b", 2))]))
    await sink.apply(Batch([delete(1, 20)]))
    assert [bytes(r[0]) for r in item_rows(pg_dsn)] == [key_of(2)] * 2
    # A stale backfill copy neither resurrects the parent nor its children; a stale
    # copy of a live parent leaves its children untouched.
    result = await sink.apply(Batch([
        upsert(1, 15, order(1, "old", 5), origin=Origin.BACKFILL),
        upsert(2, 5, order(2, "older", 4), origin=Origin.BACKFILL),
    ]))
    assert result.of(NS, Op.UPSERT).skipped == 2
    assert docs(pg_dsn) == {key_of(2): ({"_id": 2, **order(2, "b", 2)}, 10)}


async def test_one_batch_with_many_versions_of_a_parent_keeps_the_last(
    sink: Sink, pg_dsn: str
) -> None:
    await sink.apply(Batch([
        upsert(1, 10, order(1, "v1", 4)), upsert(1, 11, order(1, "v2", 1)),
        upsert(3, 11, order(3, "x", 2)), delete(3, 12), upsert(3, 13, order(3, "y", 1)),
        upsert(1, 12, order(1, "v3", 2)),
    ]))
    assert docs(pg_dsn) == {key_of(1): ({"_id": 1, **order(1, "v3", 2)}, 12),
                            key_of(3): ({"_id": 3, **order(3, "y", 1)}, 13)}


async def test_children_of_a_displaced_id_form_do_not_land(sink: Sink, pg_dsn: str) -> None:
    # 1 and 1.0 are one document; the later version's single item is all that lands.
    await sink.apply(Batch([upsert(1, 5, order(1, "int", 3)), upsert(1.0, 6, order(1, "dbl", 1))]))
    assert docs(pg_dsn) == {key_of(1): ({"_id": 1.0, **order(1, "dbl", 1)}, 6)}
    await sink.apply(Batch([upsert(2, 5, order(2, "int", 3), origin=Origin.BACKFILL),
                            upsert(2.0, 6, order(2, "dbl", 2), origin=Origin.BACKFILL)]))
    assert docs(pg_dsn)[key_of(2)] == ({"_id": 2.0, **order(2, "dbl", 2)}, 6)


@pytest.mark.parametrize("obstacle", ["none", "row", "tombstone", "same key"])
async def test_backfill_lands_every_child_row_whatever_sends_it_the_staged_way(
    sink: Sink, pg_dsn: str, obstacle: str
) -> None:
    expected = {key_of(i): ({"_id": i, **order(i, f"c{i}", i % 4)}, 50) for i in range(30)}
    if obstacle == "row":  # a newer stream row: the direct COPY fails on its key
        await sink.apply(Batch([upsert(9, 60, order(9, "stream", 2))]))
        expected[key_of(9)] = ({"_id": 9, **order(9, "stream", 2)}, 60)
    if obstacle == "tombstone":  # a delete of one of the keys: the probe finds it
        await sink.apply(Batch([delete(27, 60)]))
        del expected[key_of(27)]
    copies = [upsert(i, 50, order(i, f"c{i}", i % 4), origin=Origin.BACKFILL)
              for i in range(30)]
    if obstacle == "same key":  # 13.0 is 13: a duplicate key inside the batch
        copies.append(upsert(13.0, 50, order(13, "dup", 3), origin=Origin.BACKFILL))
    result = await sink.apply(Batch(copies))
    assert docs(pg_dsn) == expected
    applied = result.of(NS, Op.UPSERT).applied
    assert applied == len(expected) - (obstacle == "row")
