"""Sink benchmark: ``python -m tests.bench.sink --docs N``.

Starts its own throwaway PostgreSQL, builds realistic ~1 KB nested documents as raw BSON
(outside the timed regions), and measures, in the same run:

* **backfill inserts** — ``Sink.apply`` of backfill batches into an empty table, against
  **C_sink**: binary COPY of exactly the rows the sink writes (mapped beforehand) into a
  table with the same DDL, same batch size, one transaction per batch;
* **change batches** — stream batches (updates, hot-key repeats, inserts, deletes, a
  checkpoint each) against **C_merge**: COPY of the same net changes into staging, then
  one plain upsert and one plain delete per batch (no version guard, no tombstones);
* rows per CPU-second of this process (``time.process_time``) while applying, in total
  and without the mapping's share (the mapping is timed alone on the same documents).

Ratios are ceiling time / sink time for the same rows. Absolute numbers are printed
beside them; the machine is shared, so compare ratios, not runs.
"""

from __future__ import annotations

import argparse
import datetime
import random
import time
from collections.abc import Callable
from typing import Any

import anyio
import asyncpg
import bson
import psycopg
from bson import ObjectId

from cdc.batch import Batch, Change, Checkpoint, Op, Origin
from cdc.mapping import Mapper, MappingConfig, TableShape, resolve
from cdc.sink import Sink
from cdc.sink.ddl import create_table_sql
from cdc.sink.sink import asyncpg_params
from cdc.types import Namespace
from ops.pgtemp import TempPostgres

NS = Namespace("bench", "orders")
CONTROL = "mongo2pg"


def make_doc(i: int, rnd: random.Random, revision: int = 0) -> dict[str, Any]:
    """An order of ~1 KB: nested customer, an array of line items, tags, dates."""
    return {
        "_id": ObjectId(i.to_bytes(12, "big")),
        "orderNo": i,
        "revision": revision,
        "status": rnd.choice(["new", "paid", "shipped", "delivered"]),
        "created": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
        + datetime.timedelta(seconds=i),
        "customer": {
            "name": f"Customer {i}",
            "email": f"customer{i}@example.com",
            "address": {"street": f"{i % 900 + 1} Main Street", "city": "Springfield",
                        "zip": f"{10000 + i % 89999}", "country": "US"},
        },
        "items": [
            {"sku": f"SKU-{j}-{i % 1000}", "qty": rnd.randint(1, 9),
             "price": rnd.randint(100, 99999) / 100, "title": "Widget, deluxe edition"}
            for j in range(6)
        ],
        "tags": ["gift", "priority", "web"][: rnd.randint(1, 3)],
        "total": rnd.randint(1000, 999999) / 100,
        "notes": "Leave at the front door, ring twice. " * 3,
    }


def id_bson_of(i: int) -> bytes:
    return bson.encode({"_id": ObjectId(i.to_bytes(12, "big"))})


class Scenario:
    """The changes of one scenario and, per batch, the net rows a perfect merge writes."""

    def __init__(self, batches: list[Batch], mapper: Mapper) -> None:
        self.batches = batches
        self.upserts: list[list[tuple[Any, ...]]] = []
        self.deletes: list[list[bytes]] = []
        for batch in batches:
            net: dict[bytes, Change] = {}
            for c in batch.changes:
                net[c.id_bson] = c  # versions only grow in these batches: last wins
            ups, dels = [], []
            for c in net.values():
                if c.op is Op.DELETE:
                    dels.append(mapper.map_key(c.id_bson))
                else:
                    assert c.doc is not None
                    (row,) = mapper.map_document(c.doc).rows[NS.coll]
                    ups.append((*row, c.version))
            self.upserts.append(ups)
            self.deletes.append(dels)

    @property
    def net_rows(self) -> int:
        return sum(map(len, self.upserts)) + sum(map(len, self.deletes))


def backfill_batches(n: int, size: int, rnd: random.Random) -> list[Batch]:
    version = 1 << 32
    changes = [Change(NS, id_bson_of(i), version, Op.UPSERT,
                      bson.encode(make_doc(i, rnd)), Origin.BACKFILL) for i in range(n)]
    return [Batch(changes[a:a + size]) for a in range(0, n, size)]


def change_batches(n: int, count: int, size: int, rnd: random.Random) -> list[Batch]:
    """``count`` stream changes over ``n`` existing documents: 75% updates (a fifth of
    them on 50 hot documents), 12.5% inserts of new documents, 12.5% deletes."""
    version = 2 << 32
    next_new = n
    alive = list(range(n))
    changes: list[Change] = []
    for seq in range(count):
        version += 1
        dice = rnd.random()
        if dice < 0.125:
            i = next_new
            next_new += 1
            alive.append(i)
            op = Op.UPSERT
        elif dice < 0.25 and len(alive) > 100:
            i = alive.pop(rnd.randrange(len(alive)))
            op = Op.DELETE
        else:
            i = alive[rnd.randrange(50)] if dice > 0.85 else rnd.choice(alive)
            op = Op.UPSERT
        doc = bson.encode(make_doc(i, rnd, seq)) if op is Op.UPSERT else None
        changes.append(Change(NS, id_bson_of(i), version, op, doc, Origin.STREAM))
    return [
        Batch(changes[a:a + size], Checkpoint("bench", b"token", changes[-1].version))
        for a in range(0, len(changes), size)
    ]


async def run_sink(dsn: str, batches: list[Batch], mapper_for: Callable[[Namespace], Mapper],
                   ) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, rows applied) of applying ``batches``."""
    sink = await Sink.open(dsn, CONTROL, mapper_for)
    try:
        await sink.apply(Batch([]))
        applied = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            result = await sink.apply(batch)
            applied += result.total("applied")
        return time.perf_counter() - wall, time.process_time() - cpu, applied
    finally:
        await sink.close()


def clone_shape(shape: TableShape, name: str) -> TableShape:
    return TableShape("ceiling", name, shape.columns, shape.key_columns, shape.parent)


def create_clone(dsn: str, shape: TableShape) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS ceiling")
        conn.execute(create_table_sql(shape))


def columns_of(shape: TableShape) -> list[str]:
    return [*(c.name for c in shape.columns), "_m2p_version"]


async def ceiling_copy(dsn: str, shape: TableShape, batches: list[list[tuple[Any, ...]]],
                       ) -> float:
    conn = await asyncpg.connect(**asyncpg_params(dsn))
    try:
        start = time.perf_counter()
        for rows in batches:
            async with conn.transaction():
                await conn.copy_records_to_table(shape.name, schema_name=shape.schema,
                                                 records=rows, columns=columns_of(shape))
        return time.perf_counter() - start
    finally:
        await conn.close()


async def ceiling_merge(dsn: str, shape: TableShape, scenario: Scenario) -> float:
    cols = columns_of(shape)
    key = shape.key_columns[0]
    target = f'"{shape.schema}"."{shape.name}"'
    col_list = ", ".join(f'"{c}"' for c in cols)
    sets = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in cols if c != key)
    types = ", ".join(f'"{c.name}" {c.pg_type}' for c in shape.columns)
    conn = await asyncpg.connect(**asyncpg_params(dsn))
    try:
        await conn.execute(
            f"CREATE TEMP TABLE up_stage ({types}, _m2p_version bigint) ON COMMIT DELETE ROWS;"
            " CREATE TEMP TABLE del_stage (k bytea) ON COMMIT DELETE ROWS")
        upsert = (f"INSERT INTO {target} ({col_list}) SELECT {col_list} FROM up_stage"
                  f' ON CONFLICT ("{key}") DO UPDATE SET {sets}')
        delete = f'DELETE FROM {target} t USING del_stage d WHERE t."{key}" = d.k'
        start = time.perf_counter()
        for ups, dels in zip(scenario.upserts, scenario.deletes, strict=True):
            async with conn.transaction():
                await conn.copy_records_to_table("up_stage", records=ups, columns=cols)
                await conn.execute(upsert)
                if dels:
                    await conn.copy_records_to_table("del_stage", records=[(k,) for k in dels])
                    await conn.execute(delete)
        return time.perf_counter() - start
    finally:
        await conn.close()


def mapping_cpu(batches: list[Batch], mapper: Mapper) -> float:
    start = time.process_time()
    for batch in batches:
        for c in batch.changes:
            if c.doc is not None:
                mapper.map_document(c.doc)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--changes", type=int, default=0,
                        help="stream changes (default: the number of documents)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rnd = random.Random(args.seed)
    mapper = resolve(MappingConfig(), NS)

    def mapper_for(ns: Namespace) -> Mapper:
        return resolve(MappingConfig(), ns)

    print(f"building {args.docs} documents ...", flush=True)
    backfill = Scenario(backfill_batches(args.docs, args.batch, rnd), mapper)
    changes = Scenario(change_batches(args.docs, args.changes or args.docs, args.batch, rnd),
                       mapper)
    avg = sum(len(c.doc or b"") for b in backfill.batches for c in b.changes) / args.docs
    shape = mapper.tables()[0]
    pg = TempPostgres()
    dsn = pg.start()
    try:
        bf_wall, bf_cpu, _ = anyio.run(run_sink, dsn, backfill.batches, mapper_for)
        bf_map = mapping_cpu(backfill.batches, mapper)
        copy_shape = clone_shape(shape, "c_sink")
        create_clone(dsn, copy_shape)
        c_sink = anyio.run(ceiling_copy, dsn, copy_shape, backfill.upserts)

        merge_shape = clone_shape(shape, "c_merge")
        create_clone(dsn, merge_shape)
        anyio.run(ceiling_copy, dsn, merge_shape, backfill.upserts)  # same starting rows
        ch_wall, ch_cpu, _ = anyio.run(run_sink, dsn, changes.batches, mapper_for)
        ch_map = mapping_cpu(changes.batches, mapper)
        c_merge = anyio.run(ceiling_merge, dsn, merge_shape, changes)
    finally:
        pg.stop()

    n_bf = backfill.net_rows
    n_ch = changes.net_rows
    n_in = sum(len(b.changes) for b in changes.batches)
    print(f"\ndocument mode, {args.docs} documents of {avg:.0f} B raw BSON,"
          f" batches of {args.batch}; change batches: {n_in} changes -> {n_ch} net rows\n")
    head = (f"{'scenario':<18}{'rows':>8}{'sink rows/s':>13}{'ceiling':>9}"
            f"{'ceil rows/s':>13}{'ratio':>7}{'target':>8}{'rows/CPU-s':>12}"
            f"{'excl. map':>11}")
    print(head)
    print("-" * len(head))
    for name, rows, wall, cpu, mapcpu, ceiling_name, ceiling, target in (
        ("backfill inserts", n_bf, bf_wall, bf_cpu, bf_map, "C_sink", c_sink, 0.50),
        ("change batches", n_ch, ch_wall, ch_cpu, ch_map, "C_merge", c_merge, 0.60),
    ):
        ratio = ceiling / wall
        print(f"{name:<18}{rows:>8}{rows / wall:>13,.0f}{ceiling_name:>9}"
              f"{rows / ceiling:>13,.0f}{ratio:>7.2f}{'>=' + format(target, '.2f'):>8}"
              f"{rows / cpu:>12,.0f}{rows / max(cpu - mapcpu, 1e-9):>11,.0f}")
    print("\nrows/CPU-s: rows per CPU-second of this process while applying (target"
          " >= 100,000 in document mode);\n'excl. map': the same without the CPU the"
          " mapping alone takes on these documents.")


if __name__ == "__main__":
    main()
