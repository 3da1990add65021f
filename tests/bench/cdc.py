"""Change-stream tailer benchmark: ``python -m tests.bench.cdc [--events N] [--lag-seconds S]``.

Starts the sandbox in a subprocess (its own core, as a real ``mongod`` would be) and a
throwaway PostgreSQL, then measures in the same run:

* **catch-up** of ``N`` queued events per scenario (insert-, update-, delete-heavy):
  the events are written while no tailer runs, then a tailer resumes from its checkpoint
  and is timed until it has applied past the server's time — events/s. Beside it:
  **C_read**, a bare read of the same events through the same raw cursor (the source's
  ceiling), and **C_merge**, the same *net* changes (final state of every touched
  document, mapped beforehand) written by one perfectly batched COPY→staging→merge
  (plain upsert + delete, no version guard) into a clone table that starts with the
  same rows. ratio = C_merge seconds / tailer seconds.
* **lag under steady load** at ``--load`` (default 50%) of the measured update catch-up
  rate: a writer issues updates every 10 ms; the lag of each write is the wall time
  from its acknowledgement until ``Tailer.last_applied`` passes its ``operationTime``
  (sampled every 2 ms), reported as p50/p99.

The default run takes well under a minute; ``--events 100000 --lag-seconds 60`` is the
long one. The machine is shared: compare ratios, not runs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
from typing import Any

import anyio
import asyncpg
import bson
import psycopg
from bson import ObjectId
from bson.raw_bson import RawBSONDocument
from pymongo import AsyncMongoClient, DeleteOne, UpdateOne

from cdc.batch import Batch, Change, Op, Origin
from cdc.cursor import RAW, ChangeStreamCursor, StartAt, operation_time
from cdc.mapping.document import DocumentMapper
from cdc.mapping.model import TableShape
from cdc.sink import Sink
from cdc.sink.ddl import create_table_sql
from cdc.sink.sink import asyncpg_params
from cdc.stream import StreamConfig, Tailer
from cdc.types import ClusterTime, Namespace
from ops.pgtemp import TempPostgres
from tests.bench.sink import make_doc

CONTROL = "mongo2pg"


def clone_shape(shape: TableShape, name: str) -> TableShape:
    return TableShape("ceiling", name, shape.columns, shape.key_columns, shape.parent)


def create_clone(dsn: str, shape: TableShape) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS ceiling")
        conn.execute(create_table_sql(shape))


def columns_of(shape: TableShape) -> list[str]:
    return [*(c.name for c in shape.columns), "_m2p_version"]


async def copy_rows(dsn: str, shape: TableShape, rows: list[tuple[Any, ...]]) -> None:
    conn = await asyncpg.connect(**asyncpg_params(dsn))
    try:
        await conn.copy_records_to_table(shape.name, schema_name=shape.schema, records=rows,
                                         columns=columns_of(shape))
    finally:
        await conn.close()


def mapper_for(ns: Namespace) -> DocumentMapper:
    return DocumentMapper(ns.db, ns.coll)


def start_sandbox_process() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "ops", "sandbox", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    uri = proc.stdout.readline().strip()
    if not uri.startswith("mongodb://"):
        proc.kill()
        raise RuntimeError("sandbox did not start")
    return proc, uri


async def server_time(client: AsyncMongoClient[Any]) -> ClusterTime:
    when = operation_time(await client.admin.command("ping"))
    assert when is not None
    return when


async def chunked(coll: Any, ops: list[Any], size: int = 1000) -> None:
    for a in range(0, len(ops), size):
        await coll.bulk_write(ops[a:a + size], ordered=False)


class Scenario:
    def __init__(self, kind: str, events: int, base: int, rnd: random.Random) -> None:
        self.kind = kind
        self.ns = Namespace(f"bench_{kind}", "orders")
        self.events = events
        self.base = base
        self.rnd = rnd

    async def load_base(self, client: AsyncMongoClient[Any], sink: Sink, dsn: str) -> None:
        """Base documents in MongoDB, backfilled into the sink table and the clone."""
        coll = client[self.ns.db][self.ns.coll]
        docs = [make_doc(i, self.rnd) for i in range(self.base)]
        for a in range(0, len(docs), 2000):
            await coll.insert_many(docs[a:a + 2000], ordered=False)
        await sink.apply(Batch([]))
        version = (await server_time(client)).packed
        raw = client[self.ns.db].get_collection(self.ns.coll, codec_options=RAW)
        mapper = mapper_for(self.ns)
        rows: list[tuple[Any, ...]] = []
        changes: list[Change] = []
        async for doc in raw.find({}):
            body = bytes(doc.raw)
            changes.append(Change(self.ns, bson.encode({"_id": doc["_id"]}), version,
                                  Op.UPSERT, body, Origin.BACKFILL))
            (row,) = mapper.map_document(body).rows[self.ns.coll]
            rows.append((*row, version))
        for a in range(0, len(changes), 5000):
            await sink.apply(Batch(changes[a:a + 5000]))
        shape = clone_shape(mapper.tables()[0], f"c_merge_{self.kind}")
        create_clone(dsn, shape)
        if rows:
            await copy_rows(dsn, shape, rows)

    async def queue(self, client: AsyncMongoClient[Any]) -> set[Any]:
        """Write the events while no tailer reads; returns the touched ids."""
        coll = client[self.ns.db][self.ns.coll]
        rnd = self.rnd
        touched: set[Any] = set()
        if self.kind == "insert":
            docs = [make_doc(self.base + i, rnd) for i in range(self.events)]
            for a in range(0, len(docs), 2000):
                await coll.insert_many(docs[a:a + 2000], ordered=False)
            touched = {d["_id"] for d in docs}
        elif self.kind == "update":
            ops = []
            for n in range(self.events):
                _id = make_doc(rnd.randrange(self.base), rnd)["_id"]
                touched.add(_id)
                ops.append(UpdateOne({"_id": _id}, {"$set": {"status": "s" + str(n % 7),
                                                             "revision": n},
                                                    "$inc": {"total": 1}}))
            await chunked(coll, ops)
        else:
            ids = [make_doc(i, rnd)["_id"] for i in range(self.events)]
            touched = set(ids)
            await chunked(coll, [DeleteOne({"_id": i}) for i in ids])
        return touched


async def read_ceiling(client: AsyncMongoClient[Any], scenario: Scenario, start: ClusterTime,
                       target: ClusterTime, batch: int) -> tuple[float, int]:
    cursor = ChangeStreamCursor(client, patterns=[str(scenario.ns)],
                                full_document="updateLookup", split_large_events=True,
                                batch_size=batch)
    began = time.perf_counter()
    reply = await cursor.open(StartAt(at_time=start))
    seen = len(reply.events)
    # Stop as soon as the post-batch position has reached the target: one more getMore
    # after the last events would only idle for its await time.
    while reply.time is None or reply.time < target:
        reply = await cursor.next_batch(200)
        seen += len(reply.events)
    elapsed = time.perf_counter() - began
    await cursor.close()
    return elapsed, seen


async def merge_ceiling(client: AsyncMongoClient[Any], dsn: str, scenario: Scenario,
                        touched: set[Any], batches: int) -> float:
    """One perfectly batched staging+merge of the net changes (mapped beforehand)."""
    mapper = mapper_for(scenario.ns)
    shape = clone_shape(mapper.tables()[0], f"c_merge_{scenario.kind}")
    raw = client[scenario.ns.db].get_collection(scenario.ns.coll, codec_options=RAW)
    version = (await server_time(client)).packed
    alive: dict[Any, RawBSONDocument] = {}
    ids = list(touched)
    async for doc in raw.find({}):  # one scan: a big $in is slow on the sandbox
        if doc["_id"] in touched:
            alive[doc["_id"]] = doc
    upserts: list[tuple[Any, ...]] = []
    deletes: list[bytes] = []
    for _id in ids:
        if _id in alive:
            (row,) = mapper.map_document(bytes(alive[_id].raw)).rows[scenario.ns.coll]
            upserts.append((*row, version))
        else:
            deletes.append(mapper.map_key(bson.encode({"_id": _id})))
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
        upsert = (f"INSERT INTO {target} ({col_list}) SELECT {col_list} FROM up_stage"  # noqa: S608
                  f' ON CONFLICT ("{key}") DO UPDATE SET {sets}')
        delete = f'DELETE FROM {target} t USING del_stage d WHERE t."{key}" = d.k'  # noqa: S608
        n = max(1, batches)
        up_size = -(-len(upserts) // n) or 1
        del_size = -(-len(deletes) // n) or 1
        began = time.perf_counter()
        for b in range(n):
            ups = upserts[b * up_size:(b + 1) * up_size]
            dels = deletes[b * del_size:(b + 1) * del_size]
            async with conn.transaction():
                if ups:
                    await conn.copy_records_to_table("up_stage", records=ups, columns=cols)
                    await conn.execute(upsert)
                if dels:
                    await conn.copy_records_to_table("del_stage", records=[(k,) for k in dels])
                    await conn.execute(delete)
        return time.perf_counter() - began
    finally:
        await conn.close()


async def steady_lag(client: AsyncMongoClient[Any], sink: Sink, rate: float, seconds: float,
                     base: int, rnd: random.Random) -> tuple[list[float], int]:
    ns = Namespace("bench_update", "orders")
    coll = client[ns.db][ns.coll]
    tailer = Tailer(client=client, sink=sink, include=[str(ns)],
                    config=StreamConfig(), stream_name="lag", start_fresh=True)
    writes: list[tuple[float, ClusterTime]] = []
    samples: list[tuple[float, ClusterTime]] = []
    done = anyio.Event()

    written = 0

    async def writer() -> None:
        # Paced on the total: each 10 ms tick writes what the target rate owes by now,
        # so slow acknowledgements do not lower the offered load.
        nonlocal written
        tick = 0.01
        began = time.perf_counter()
        next_at = began
        async with client.start_session() as session:
            while time.perf_counter() < end:
                owed = int(rate * (time.perf_counter() - began)) - written
                ops = [UpdateOne({"_id": ObjectId(rnd.randrange(base).to_bytes(12, "big"))},
                                 {"$set": {"revision": written + k}})
                       for k in range(max(1, min(owed, 2000)))]
                await coll.bulk_write(ops, ordered=False, session=session)
                written += len(ops)
                ts = session.operation_time
                assert ts is not None
                writes.append((time.perf_counter(), ClusterTime(ts.time, ts.inc)))
                next_at += tick
                await anyio.sleep(max(0.0, next_at - time.perf_counter()))
        done.set()

    async def monitor() -> None:
        while not done.is_set() or (writes and tailer.last_applied < writes[-1][1]):
            samples.append((time.perf_counter(), tailer.last_applied))
            await anyio.sleep(0.002)

    async with anyio.create_task_group() as tg:
        await tg.start(tailer.run)
        end = time.perf_counter() + seconds
        tg.start_soon(writer)
        await monitor()
        tg.cancel_scope.cancel()
    lags: list[float] = []
    j = 0
    for wall, ct in writes:  # both sequences only grow: one forward pass
        while j < len(samples) and (samples[j][0] < wall or samples[j][1] < ct):
            j += 1
        if j < len(samples):
            lags.append(samples[j][0] - wall)
    return lags, written


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, uri: str, dsn: str) -> None:
    rnd = random.Random(args.seed)
    client: AsyncMongoClient[Any] = AsyncMongoClient(uri)
    sink = await Sink.open(dsn, CONTROL, mapper_for)
    results = []
    try:
        for kind in ("insert", "update", "delete"):
            base = 0 if kind == "insert" else max(args.base, args.events)
            scenario = Scenario(kind, args.events, base, rnd)
            await scenario.load_base(client, sink, dsn)
            config = StreamConfig(batch_max_events=args.batch)
            first = Tailer(client=client, sink=sink, include=[str(scenario.ns)],
                           config=config, stream_name=kind, start_fresh=True)
            await first.run_once()
            start = first.start_time
            await first.close()
            touched = await scenario.queue(client)
            target = await server_time(client)
            tailer = Tailer(client=client, sink=sink, include=[str(scenario.ns)],
                            config=config, stream_name=kind)
            began = time.perf_counter()
            steps = 0
            while tailer.last_applied < target:
                await tailer.run_once()
                steps += 1
            t_tail = time.perf_counter() - began
            await tailer.close()
            t_read, seen = await read_ceiling(client, scenario, start, target, args.batch)
            batches = -(-args.events // args.batch)
            t_merge = await merge_ceiling(client, dsn, scenario, touched, batches)
            results.append((kind, args.events, len(touched), t_tail, seen, t_read, t_merge,
                            steps))
            print(f"  {kind}: tailer {t_tail:.2f} s, read {t_read:.2f} s,"
                  f" merge {t_merge:.3f} s", flush=True)
        rate = next(r[1] / r[3] for r in results if r[0] == "update") * args.load
        lags, written = await steady_lag(client, sink, rate, args.lag_seconds,
                                         max(args.base, args.events), rnd)
    finally:
        await sink.close()
        await client.close()

    print(f"\ncatch-up of {args.events} queued events per scenario, batch_max_events="
          f"{args.batch}, document mode, ~1 KB documents\n")
    head = (f"{'scenario':<9}{'events':>8}{'net':>7}{'tailer ev/s':>13}{'C_read ev/s':>13}"
            f"{'C_merge s':>11}{'tailer s':>10}{'ratio':>7}{'steps':>7}")
    print(head)
    print("-" * len(head))
    for kind, events, net, t_tail, seen, t_read, t_merge, steps in results:
        print(f"{kind:<9}{events:>8}{net:>7}{events / t_tail:>13,.0f}{seen / t_read:>13,.0f}"
              f"{t_merge:>11.3f}{t_tail:>10.3f}{t_merge / t_tail:>7.3f}{steps:>7}")
    print("\nratio = C_merge seconds / tailer seconds for the same net changes;"
          " C_read = bare change-stream read of the same events (source ceiling).")
    print(f"\nsteady load: {rate:,.0f} updates/s offered ({args.load:.0%} of update catch-up),"
          f" {written / args.lag_seconds:,.0f}/s achieved, for {args.lag_seconds:.0f} s:"
          f" {written} updates in {len(lags)} timed write batches")
    if lags:
        print(f"lag p50 {pct(lags, 0.5) * 1000:.1f} ms   p99 {pct(lags, 0.99) * 1000:.1f} ms"
              f"   max {max(lags) * 1000:.1f} ms   mean {statistics.fmean(lags) * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=6_000)
    parser.add_argument("--base", type=int, default=6_000,
                        help="documents present before update/delete scenarios")
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--lag-seconds", type=float, default=6.0)
    parser.add_argument("--load", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    proc, uri = start_sandbox_process()
    pg = TempPostgres()
    dsn = pg.start()
    try:
        anyio.run(run, args, uri, dsn)
    finally:
        pg.stop()
        proc.terminate()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":
    main()
