"""Sink benchmark: ``python -m tests.bench.sink --docs N``.

Starts its own throwaway PostgreSQL, builds realistic ~1 KB nested documents as raw BSON
(outside the timed regions), and measures, in document mode and in column mode (typed
columns + a child table of line items), in the same run:

* **backfill inserts** — ``Sink.apply`` of backfill batches into empty tables, against
  **C_sink**: binary COPY of exactly the rows the sink writes (mapped beforehand) into
  tables with the same DDL, same batch size, one transaction per batch;
* **change batches** — stream batches (updates, hot-key repeats, inserts, deletes, a
  checkpoint each) against **C_merge**: COPY of the same net changes into staging, then
  one plain upsert and one plain delete per batch and table (child tables: delete the
  changed parents' rows, insert the new ones); no version guard, no tombstones;
* rows per CPU-second of this process (``time.process_time``) while applying, in total
  and without the mapping's share (CPU of the mapping path the sink takes — the C
  ``copy_rows`` of whole batches, or ``map_document`` — timed in the same run).

"rows" counts every row written (a column-mode order is 1 root + 6 child rows; a
delete counts its keys). Ratios are ceiling time / sink time for the same rows.
Absolute numbers are printed beside them; the machine is shared, so compare ratios,
not runs.
"""

from __future__ import annotations

import argparse
import datetime
import random
import time
from typing import Any

import anyio
import asyncpg
import bson
import psycopg
from bson import ObjectId
from psycopg import sql

from cdc.batch import Batch, Change, Checkpoint, Op, Origin
from cdc.mapping import (
    ChildRule,
    ColumnRule,
    Mapper,
    MappingConfig,
    MappingRule,
    TableShape,
    resolve,
)
from cdc.sink import Sink
from cdc.sink.ddl import create_table_sql
from cdc.sink.sink import asyncpg_params
from cdc.types import Namespace
from ops.pgtemp import TempPostgres

NS_DOC = Namespace("bench", "orders_doc")
NS_COL = Namespace("bench", "orders_col")
CONTROL = "mongo2pg"
MAPPING = MappingConfig(rules=(MappingRule(
    namespace=str(NS_COL), mode="column",
    columns=(ColumnRule("orderNo", "bigint"), ColumnRule("status", "text"),
             ColumnRule("created", "timestamptz"), ColumnRule("customer.name", "text"),
             ColumnRule("total", "double precision")),
    children=(ChildRule("items", "orders_col_items",
                        columns=(ColumnRule("sku", "text"), ColumnRule("qty", "integer"),
                                 ColumnRule("price", "double precision"))),),
),))


def mapper_for(ns: Namespace) -> Mapper:
    return resolve(MAPPING, ns)


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
    """The changes of one scenario and, per batch and table, the net rows a perfect merge
    writes (root rows to upsert, child rows to insert, keys to delete)."""

    def __init__(self, batches: list[Batch], mapper: Mapper) -> None:
        self.batches = batches
        self.shapes = mapper.tables()
        self.rows: list[dict[str, list[tuple[Any, ...]]]] = []
        self.deletes: list[list[bytes]] = []
        self.parents: list[list[bytes]] = []
        for batch in batches:
            net: dict[bytes, Change] = {}
            for c in batch.changes:
                net[c.id_bson] = c  # versions only grow in these batches: last wins
            rows: dict[str, list[tuple[Any, ...]]] = {t.name: [] for t in self.shapes}
            dels, parents = [], []
            for c in net.values():
                if c.op is Op.DELETE:
                    dels.append(mapper.map_key(c.id_bson))
                    continue
                assert c.doc is not None
                mapped = mapper.map_document(c.doc)
                parents.append(mapped.key)
                for table, table_rows in mapped.rows.items():
                    rows[table].extend((*r, c.version) for r in table_rows)
            self.rows.append(rows)
            self.deletes.append(dels)
            self.parents.append(parents)

    @property
    def net_rows(self) -> int:
        return sum(len(r) for b in self.rows for r in b.values()) + sum(map(len, self.deletes))


def backfill_batches(ns: Namespace, n: int, size: int, rnd: random.Random) -> list[Batch]:
    version = 1 << 32
    changes = [Change(ns, id_bson_of(i), version, Op.UPSERT,
                      bson.encode(make_doc(i, rnd)), Origin.BACKFILL) for i in range(n)]
    return [Batch(changes[a:a + size]) for a in range(0, n, size)]


def change_batches(ns: Namespace, n: int, count: int, size: int, rnd: random.Random
                   ) -> list[Batch]:
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
        changes.append(Change(ns, id_bson_of(i), version, op, doc, Origin.STREAM))
    return [
        Batch(changes[a:a + size], Checkpoint(f"bench-{ns.coll}", b"token",
                                              changes[min(a + size, len(changes)) - 1].version))
        for a in range(0, len(changes), size)
    ]


async def run_sink(dsn: str, batches: list[Batch]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, CPU seconds of the mapping's share) of applying ``batches``.

    The sink runs with the production mappers, untouched: timing each ``map_document``
    call would cost about as much as the call itself. The mapping's share is measured
    right after, in the same process, by mapping the same documents in one timed loop.
    """
    sink = await Sink.open(dsn, CONTROL, mapper_for)
    try:
        # Warm-up outside the timed region, like the ceilings' CREATE TABLE: the sink
        # creates the tables and its staging tables (costs one tombstone of a key that
        # the scenario never uses).
        ns = batches[0].changes[0].namespace
        await sink.apply(Batch([Change(ns, id_bson_of(10**9), 1, Op.DELETE)]))
        # Backfill batches carry a read lease, as a backfill worker's do; change batches
        # none (the steady state once the backfill is done: deletes leave no tombstone).
        if any(c.origin is Origin.BACKFILL for b in batches for c in b.changes):
            reader = await sink.open_reader(ns, "bench", 3600)
            for batch in batches:
                batch.reader = reader
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            await sink.apply(batch)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await sink.close()
    return wall, cpu, mapping_cpu(batches)


def mapping_cpu(batches: list[Batch]) -> float:
    """CPU seconds the production mapping takes for every document of ``batches``: the
    C path (``copy_rows``, whole batches, as the sink calls it) where the mapper has one,
    else ``map_document`` per document."""
    work: list[tuple[Mapper, list[bytes], list[int]]] = []
    for b in batches:
        ups = [(c.doc, c.version) for c in b.changes if c.doc is not None]
        if ups:
            work.append((mapper_for(b.changes[0].namespace), [d for d, _ in ups],
                         [v for _, v in ups]))
    start = time.process_time()
    for mapper, docs, versions in work:
        fast = getattr(mapper, "copy_rows", None)
        if fast is None or fast(docs, versions) is None:
            for doc in docs:
                mapper.map_document(doc)
    return time.process_time() - start


def clone(shape: TableShape, suffix: str) -> TableShape:
    return TableShape("ceiling", f"{shape.name}_{suffix}", shape.columns, shape.key_columns,
                      shape.parent)


def create_clones(dsn: str, shapes: tuple[TableShape, ...]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS ceiling")
        for shape in shapes:
            conn.execute(create_table_sql(shape))


def columns_of(shape: TableShape) -> list[str]:
    return [*(c.name for c in shape.columns), "_m2p_version"]


async def ceiling_copy(dsn: str, shapes: tuple[TableShape, ...], scenario: Scenario) -> float:
    """C_sink: COPY exactly the rows the sink writes, batch by batch."""
    conn = await asyncpg.connect(**asyncpg_params(dsn))
    try:
        start = time.perf_counter()
        for rows in scenario.rows:
            async with conn.transaction():
                for shape, source in zip(shapes, scenario.shapes, strict=True):
                    if rows[source.name]:
                        await conn.copy_records_to_table(
                            shape.name, schema_name=shape.schema, records=rows[source.name],
                            columns=columns_of(shape))
        return time.perf_counter() - start
    finally:
        await conn.close()


async def ceiling_merge(dsn: str, shapes: tuple[TableShape, ...], scenario: Scenario) -> float:
    """C_merge: COPY the net changes into staging, one upsert and one delete per table."""
    statements: list[tuple[str, str, list[str], str, str]] = []
    conn = await asyncpg.connect(**asyncpg_params(dsn))
    try:
        for n, shape in enumerate(shapes):
            cols = columns_of(shape)
            target = sql.Identifier(shape.schema, shape.name)
            col_list = sql.SQL(", ").join(map(sql.Identifier, cols))
            key = sql.Identifier(shape.key_columns[0])
            stage = f"stage_{n}"
            await conn.execute(sql.SQL(
                "CREATE TEMP TABLE {} ({}, _m2p_version bigint) ON COMMIT DELETE ROWS").format(
                sql.Identifier(stage),
                sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c.name),
                                                          sql.SQL(c.pg_type))
                                   for c in shape.columns)).as_string(None))
            if shape.parent is None:
                sets = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                                          for c in cols if c != shape.key_columns[0])
                write_sql = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({})"
                                " DO UPDATE SET {}").format(target, col_list, col_list,
                                                            sql.Identifier(stage), key, sets)
                delete_sql = sql.SQL("DELETE FROM {} t USING unnest($1::bytea[]) AS d(k)"
                                 " WHERE t.{} = d.k").format(target, key)
            else:
                write_sql = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                    target, col_list, col_list, sql.Identifier(stage))
                delete_sql = sql.SQL("DELETE FROM {} t USING unnest($1::bytea[]) AS d(k)"
                                 " WHERE t.{} = d.k").format(target, key)
            statements.append((stage, shape.name, cols, write_sql.as_string(None),
                               delete_sql.as_string(None)))
        start = time.perf_counter()
        for rows, dels, parents in zip(scenario.rows, scenario.deletes, scenario.parents,
                                       strict=True):
            async with conn.transaction():
                for (stage, _name, cols, write, delete), source in zip(
                        statements, scenario.shapes, strict=True):
                    if source.parent is None:
                        await conn.copy_records_to_table(stage, records=rows[source.name],
                                                         columns=cols)
                        await conn.execute(write)
                        if dels:
                            await conn.execute(delete, dels)
                    else:
                        await conn.execute(delete, dels + parents)
                        await conn.copy_records_to_table(stage, records=rows[source.name],
                                                         columns=cols)
                        await conn.execute(write)
        return time.perf_counter() - start
    finally:
        await conn.close()


class Measured:
    def __init__(self, name: str, rows: int, wall: float, cpu: float, map_cpu: float,
                 ceiling_name: str, ceiling: float, target: float) -> None:
        self.name, self.rows, self.wall, self.cpu, self.map_cpu = name, rows, wall, cpu, map_cpu
        self.ceiling_name, self.ceiling, self.target = ceiling_name, ceiling, target


def measure_mode(dsn: str, ns: Namespace, args: argparse.Namespace) -> list[Measured]:
    rnd = random.Random(args.seed)
    mapper = mapper_for(ns)
    backfill = Scenario(backfill_batches(ns, args.docs, args.batch, rnd), mapper)
    changes = Scenario(change_batches(ns, args.docs, args.changes or args.docs, args.batch,
                                      rnd), mapper)
    shapes = mapper.tables()
    bf_wall, bf_cpu, bf_map = anyio.run(run_sink, dsn, backfill.batches)
    copy_shapes = tuple(clone(s, "c_sink") for s in shapes)
    create_clones(dsn, copy_shapes)
    c_sink = anyio.run(ceiling_copy, dsn, copy_shapes, backfill)

    merge_shapes = tuple(clone(s, "c_merge") for s in shapes)
    create_clones(dsn, merge_shapes)
    anyio.run(ceiling_copy, dsn, merge_shapes, backfill)  # the same starting rows
    ch_wall, ch_cpu, ch_map = anyio.run(run_sink, dsn, changes.batches)
    c_merge = anyio.run(ceiling_merge, dsn, merge_shapes, changes)
    return [
        Measured("backfill inserts", backfill.net_rows, bf_wall, bf_cpu, bf_map, "C_sink",
                 c_sink, 0.50),
        Measured("change batches", changes.net_rows, ch_wall, ch_cpu, ch_map, "C_merge",
                 c_merge, 0.60),
    ]


def fresh_database(server: str, name: str) -> str:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return psycopg.conninfo.make_conninfo(server, dbname=name)


def best(runs: list[list[Measured]]) -> list[Measured]:
    """Per scenario, the fastest sink run and the fastest ceiling run (noise only slows)."""
    out = []
    for same in zip(*runs, strict=True):
        first = same[0]
        fastest = min(same, key=lambda m: m.wall)
        leanest = min(same, key=lambda m: m.cpu)
        out.append(Measured(first.name, first.rows, fastest.wall, leanest.cpu,
                            leanest.map_cpu, first.ceiling_name,
                            min(m.ceiling for m in same), first.target))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--changes", type=int, default=0,
                        help="stream changes (default: the number of documents)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per figure, each in a fresh database; the best is shown")
    args = parser.parse_args()
    sample = bson.encode(make_doc(1, random.Random(args.seed)))
    modes = (("document", NS_DOC), ("column", NS_COL))
    runs: dict[str, list[list[Measured]]] = {mode: [] for mode, _ in modes}
    pg = TempPostgres()
    server = pg.start()
    try:
        for run in range(args.repeat):
            for mode, ns in modes:
                dsn = fresh_database(server, f"bench_{mode}_{run}")
                print(f"run {run + 1}/{args.repeat}: {mode} mode ...", flush=True)
                runs[mode].append(measure_mode(dsn, ns, args))
    finally:
        pg.stop()
    results = [(mode, best(runs[mode])) for mode, _ in modes]

    print(f"\n{args.docs} documents of ~{len(sample)} B raw BSON, batches of {args.batch}"
          f" changes; {args.changes or args.docs} stream changes; best of {args.repeat}"
          " runs per figure\n")
    head = (f"{'mode':<9}{'scenario':<18}{'rows':>8}{'sink rows/s':>13}{'ceiling':>9}"
            f"{'ceil rows/s':>13}{'ratio':>7}{'target':>8}{'rows/CPU-s':>12}"
            f"{'excl. map':>11}")
    print(head)
    print("-" * len(head))
    for mode, measured in results:
        for m in measured:
            print(f"{mode:<9}{m.name:<18}{m.rows:>8}{m.rows / m.wall:>13,.0f}"
                  f"{m.ceiling_name:>9}{m.rows / m.ceiling:>13,.0f}{m.ceiling / m.wall:>7.2f}"
                  f"{'>=' + format(m.target, '.2f'):>8}{m.rows / m.cpu:>12,.0f}"
                  f"{m.rows / max(m.cpu - m.map_cpu, 1e-9):>11,.0f}")
    print("\nratio: ceiling time / sink time for the same rows. rows/CPU-s: rows per"
          " CPU-second of this\nprocess while applying (target >= 100,000 in document"
          " mode); 'excl. map': the same without\nthe CPU that mapping the same"
          " documents takes (timed in one loop right after, same process).")


if __name__ == "__main__":
    main()
