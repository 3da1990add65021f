"""Change-stream tailer benchmark: ``python -m tests.bench.cdc [--events N] [--lag-seconds S]``.

Starts the sandbox in a subprocess (its own core, as a real ``mongod`` would be) and a
throwaway PostgreSQL, then measures in the same run:

* **catch-up** of ``N`` queued events per scenario (insert-, update-, delete-heavy):
  the events are written while no tailer runs, then a tailer resumes from its checkpoint
  and is timed until it has applied past the server's time — events/s. Beside it:
  **C_read**, a bare read of the same events through the same raw cursor (the source's
  ceiling; it stops at the first reply whose post-batch position reaches the target),
  and **C_merge**, the same *net* changes (final state of every touched document,
  mapped beforehand) written by one perfectly batched COPY→staging→merge (plain upsert
  + delete, no version guard) in ``ceil(N / batch)`` transactions into a clone table
  that starts with the same rows. ratio = C_merge seconds / tailer seconds (target
  ≥ 0.60). The tailer's time is split into ``sink s`` (while the sink stages or
  commits a batch; the two overlap) and
  ``own s`` (reading, decoding, batching — reads overlap applies, so this is what is
  *not* hidden behind PostgreSQL), with the number of transactions it committed.
* **lag under steady load** at ``--load`` (default 50%) of the measured update catch-up
  rate, or ``--rate`` updates/s: :mod:`tests.bench.cdc_load`, a writer process of its
  own (like an application's writers; its CPU does not compete with the tailer's),
  issues updates every 10 ms, paced on the total owed; the lag of each write is the
  time from its acknowledgement until ``Tailer.last_applied`` passes its
  ``operationTime`` (0 if it already had). Reported: offered vs achieved rate, p50/p99/
  max, and drift — p99 of the first vs the last third of the run and the least-squares
  slope of lag over time (ms per minute); ``--lag-seconds 120`` is the 2-minute run.

Beside each catch-up, the CPU seconds each process spent on it (from ``/proc``): the
tailer's (this process), the sandbox's and PostgreSQL's (the postmaster and its
backends, those that exited included) — on a machine of 2 cores the three share, their
sum over the tailer's seconds says how busy the machine was, and PostgreSQL's alone
whether one backend applying in order was the limit.

Default ``--events 20000`` (was 6,000): with one apply of 5,000 events taking longer
than reading them, the tailer applies while it reads ahead, so a run of only two
batches mostly measures pipeline fill (the first reply is read before anything can be
applied) and fixed costs; 20,000 events (four C_merge batches) measure the steady
rate while a default run still ends in about a minute (40 s here with the 10 s lag
run). The machine is shared: compare ratios, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

import anyio
import anyio.abc
import asyncpg
import bson
import msgspec
import psycopg
from bson.raw_bson import RawBSONDocument
from pymongo import AsyncMongoClient, DeleteOne, UpdateOne

from cdc.batch import Batch, Change, Checkpoint, Op, Origin
from cdc.cursor import RAW, ChangeStreamCursor, StartAt, operation_time
from cdc.errors import HistoryLostError
from cdc.mapping.document import DocumentMapper
from cdc.mapping.model import TableShape
from cdc.sink import Sink
from cdc.sink.ddl import create_table_sql
from cdc.sink.sink import asyncpg_params
from cdc.state import StreamState
from cdc.stream import StreamConfig, Tailer
from cdc.types import ZERO_TIME, ClusterTime, Namespace
from ops.gctune import tune_gc
from ops.pgtemp import TempPostgres
from tests.bench.sink import make_doc

CONTROL = "mongo2pg"
_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (None: gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds (user + system) of process ``pid`` so far (and of the children it has
    reaped, when asked); 0 once it is gone."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


class CpuClock:
    """CPU seconds (user + system) of the tailer's process, the sandbox's and
    PostgreSQL's: the postmaster with its live children and those it has reaped."""

    def __init__(self, sandbox_pid: int, postmaster_pid: int) -> None:
        self.sandbox_pid = sandbox_pid
        self.postmaster_pid = postmaster_pid

    def read(self) -> tuple[float, float, float]:
        pg = process_cpu(self.postmaster_pid, children=True)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                fields = _stat(int(entry))
                if fields is not None and int(fields[1]) == self.postmaster_pid:
                    pg += process_cpu(int(entry))
        return process_cpu(os.getpid()), process_cpu(self.sandbox_pid), pg


def postmaster_pid(pg: TempPostgres) -> int:
    return int((pg.data / "postmaster.pid").read_text().split()[0])


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


def start_sandbox_process(extra: list[str] | None = None
                          ) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "ops", "sandbox", "--port", "0",
                             *(extra or [])], stdout=subprocess.PIPE, text=True)
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
    def __init__(self, kind: str, events: int, base: int, rnd: random.Random,
                 tag: str = "") -> None:
        self.kind = kind
        self.name = f"{kind}{tag}"
        """Unique per run: namespace, clone table and stream are this run's own."""
        self.ns = Namespace(f"bench_{self.name}", "orders")
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
        reader = await sink.open_reader(self.ns, "bench", 3600)
        for a in range(0, len(changes), 5000):
            await sink.apply(Batch(changes[a:a + 5000], reader=reader))
        await sink.close_reader(reader)
        shape = clone_shape(mapper.tables()[0], f"c_merge_{self.name}")
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
                        touched: set[Any], batches: int) -> tuple[float, float]:
    """One perfectly batched staging+merge of the net changes (mapped beforehand): its
    seconds, and the CPU seconds its PostgreSQL backend spent meanwhile."""
    mapper = mapper_for(scenario.ns)
    shape = clone_shape(mapper.tables()[0], f"c_merge_{scenario.name}")
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
        backend = conn.get_server_pid()
        cpu_began = process_cpu(backend)
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
        return time.perf_counter() - began, process_cpu(backend) - cpu_began
    finally:
        await conn.close()


class LagRun(msgspec.Struct, frozen=True):
    """One steady-load run: per acknowledged write, its age (s since the load began)
    and its lag (s from acknowledgement until applied); what was offered and written."""

    points: list[tuple[float, float]]
    offered: float
    written: int
    seconds: float
    history_lost: bool = False
    """The tailer fell behind the sandbox's oplog window (code 286): the offered load
    outran this machine; the run stopped there."""


async def steady_lag(client: AsyncMongoClient[Any], sink: Sink, uri: str, rate: float,
                     seconds: float, base: int, seed: int) -> LagRun:
    """Tail ``bench_update.orders`` while :mod:`tests.bench.cdc_load` updates it."""
    ns = Namespace("bench_update", "orders")
    tailer = Tailer(client=client, sink=sink, include=[str(ns)],
                    config=StreamConfig(), stream_name="lag", start_fresh=True)
    # (monotonic time first seen, last_applied): appended whenever last_applied moves.
    seen: list[tuple[float, ClusterTime]] = []
    output = bytearray()
    command = [sys.executable, "-m", "tests.bench.cdc_load", uri, str(rate), str(seconds),
               str(base), str(seed)]
    started: list[anyio.abc.Process] = []
    run: LagRun | None = None
    try:
        run = await _follow(tailer, command, started, output, seen, rate)
    except* HistoryLostError:
        for load in started:
            if load.returncode is None:
                load.kill()
                await load.wait()
    return run if run is not None else LagRun([], rate, 0, seconds, history_lost=True)


async def _follow(tailer: Tailer, command: list[str], started: list[anyio.abc.Process],
                  output: bytearray, seen: list[tuple[float, ClusterTime]], rate: float
                  ) -> LagRun:
    async with anyio.create_task_group() as tg:
        await tg.start(tailer.run)
        load = await anyio.open_process(command, stderr=None)
        started.append(load)

        async def read_output() -> None:
            assert load.stdout is not None
            async for chunk in load.stdout:
                output.extend(chunk)

        tg.start_soon(read_output)
        last = ZERO_TIME
        while load.returncode is None:
            if tailer.last_applied != last:
                last = tailer.last_applied
                seen.append((time.monotonic(), last))
            await anyio.sleep(0.002)
        await load.wait()
        lines = [json.loads(line) for line in output.decode().splitlines() if line]
        writes = [(w, ClusterTime(t, i)) for w, t, i, _ in lines[:-1]]
        _, written, elapsed = lines[-1]
        final = writes[-1][1] if writes else ZERO_TIME
        with anyio.move_on_after(60):
            while tailer.last_applied < final:
                if tailer.last_applied != last:
                    last = tailer.last_applied
                    seen.append((time.monotonic(), last))
                await anyio.sleep(0.002)
        seen.append((time.monotonic(), tailer.last_applied))
        tg.cancel_scope.cancel()
    began = writes[0][0] if writes else 0.0
    points: list[tuple[float, float]] = []
    j = 0
    for wall, ct in writes:  # both sequences only grow: one forward pass
        while j < len(seen) and seen[j][1] < ct:
            j += 1
        if j < len(seen):  # applied when first seen past it (0 if before the ack)
            points.append((wall - began, max(0.0, seen[j][0] - wall)))
    return LagRun(points, rate, int(written), float(elapsed))


def drift(points: list[tuple[float, float]]) -> tuple[float, float, float]:
    """p99 of the first and of the last third of the run, and the least-squares slope of
    lag over time (seconds of lag per minute of run)."""
    if len(points) < 3:
        return float("nan"), float("nan"), float("nan")
    span = points[-1][0] - points[0][0] or 1.0
    first = [lag for at, lag in points if at - points[0][0] <= span / 3]
    last = [lag for at, lag in points if at - points[0][0] >= 2 * span / 3]
    mean_t = statistics.fmean(at for at, _ in points)
    mean_l = statistics.fmean(lag for _, lag in points)
    var = sum((at - mean_t) ** 2 for at, _ in points) or 1.0
    slope = sum((at - mean_t) * (lag - mean_l) for at, lag in points) / var
    return pct(first, 0.99), pct(last, 0.99), slope * 60


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class TimedSink:
    """The sink, with the time during which any of its calls is running summed (a batch
    is staged while the one before it commits): what of the tailer's time is
    PostgreSQL writing (the sink's cost) and what is its own."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.seconds = 0.0
        self.batches = 0
        self._active = 0
        self._since = 0.0

    def _enter(self) -> None:
        if not self._active:
            self._since = time.perf_counter()
        self._active += 1

    def _leave(self) -> None:
        self._active -= 1
        if not self._active:
            self.seconds += time.perf_counter() - self._since

    async def apply(self, batch: Batch) -> Any:
        return await (await self.stage(batch)).commit()

    async def stage(self, batch: Batch) -> Any:
        self._enter()
        try:
            return _TimedStaged(self, await self._sink.stage(batch))
        finally:
            self._leave()

    async def load_checkpoint(self, stream: str) -> Checkpoint | None:
        return await self._sink.load_checkpoint(stream)


class _TimedStaged:
    def __init__(self, timed: TimedSink, staged: Any) -> None:
        self._timed = timed
        self._staged = staged

    async def commit(self) -> Any:
        self._timed._enter()
        try:
            return await self._staged.commit()
        finally:
            self._timed._leave()
            self._timed.batches += 1

    async def abort(self) -> None:
        await self._staged.abort()


class Result(msgspec.Struct, frozen=True):
    kind: str
    events: int
    net: int
    t_tail: float
    t_sink: float
    batches: int
    seen: int
    t_read: float
    t_merge: float
    cpu: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """CPU seconds of the tailer's process, the sandbox and PostgreSQL during catch-up."""
    cpu_merge: float = 0.0
    """CPU seconds of C_merge's PostgreSQL backend during C_merge."""


def best(results: list[Result]) -> list[Result]:
    """Per scenario, the fastest tailer run beside the fastest C_merge and C_read."""
    out: list[Result] = []
    for kind in dict.fromkeys(r.kind for r in results):
        runs = [r for r in results if r.kind == kind]
        fastest = min(runs, key=lambda r: r.t_tail)
        merge = min(runs, key=lambda r: r.t_merge)
        out.append(msgspec.structs.replace(
            fastest, t_merge=merge.t_merge, cpu_merge=merge.cpu_merge,
            t_read=min(r.t_read for r in runs)))
    return out


async def catch_up(client: AsyncMongoClient[Any], sink: Sink, dsn: str, kind: str,
                   args: argparse.Namespace, rnd: random.Random, clock: CpuClock,
                   tag: str = "") -> Result:
    base = 0 if kind == "insert" else max(args.base, args.events)
    scenario = Scenario(kind, args.events, base, rnd, tag)
    await scenario.load_base(client, sink, dsn)
    config = StreamConfig(batch_max_events=args.batch)
    first = Tailer(client=client, sink=sink, include=[str(scenario.ns)],
                   config=config, stream_name=scenario.name, start_fresh=True)
    await first.run_once()
    start = first.start_time
    await first.close()
    touched = await scenario.queue(client)
    target = await server_time(client)
    timed = TimedSink(sink)
    tailer = Tailer(client=client, sink=timed, include=[str(scenario.ns)], config=config,
                    stream_name=scenario.name, state=StreamState(sink.pool, CONTROL))
    cpu_before = clock.read()
    began = time.perf_counter()
    while tailer.last_applied < target:
        await tailer.run_once()
    t_tail = time.perf_counter() - began
    cpu_after = clock.read()
    await tailer.close()
    t_read, seen = await read_ceiling(client, scenario, start, target, args.batch)
    batches = -(-args.events // args.batch)
    t_merge, pg_merge = await merge_ceiling(client, dsn, scenario, touched, batches)
    print(f"  {kind}: tailer {t_tail:.2f} s, read {t_read:.2f} s, merge {t_merge:.3f} s",
          flush=True)
    cpu = (cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1],
           cpu_after[2] - cpu_before[2])
    return Result(kind, args.events, len(touched), t_tail, timed.seconds, timed.batches,
                  seen, t_read, t_merge, cpu, pg_merge)


async def run(args: argparse.Namespace, uri: str, dsn: str, clock: CpuClock) -> None:
    rnd = random.Random(args.seed)
    client: AsyncMongoClient[Any] = AsyncMongoClient(uri)
    sink = await Sink.open(dsn, CONTROL, mapper_for)
    results: list[Result] = []
    lag: LagRun | None = None
    try:
        for n in range(args.repeat):
            for kind in args.scenarios.split(","):
                results.append(await catch_up(client, sink, dsn, kind, args, rnd, clock,
                                              f"_{n}" if n else ""))
        results = best(results)
        if args.lag_seconds > 0:
            if args.rate:
                rate = args.rate
            else:
                update = next((r for r in results if r.kind == "update"), None)
                if update is None:
                    raise SystemExit("--rate is needed without the update scenario")
                rate = update.events / update.t_tail * args.load
            if not any(r.kind == "update" for r in results):
                await Scenario("update", 0, max(args.base, args.events), rnd).load_base(
                    client, sink, dsn)
            print(f"  steady load: {rate:,.0f} updates/s for {args.lag_seconds:.0f} s",
                  flush=True)
            lag = await steady_lag(client, sink, uri, rate, args.lag_seconds,
                                   max(args.base, args.events), args.seed)
    finally:
        await sink.close()
        await client.close()
    report(args, results, lag)


def report(args: argparse.Namespace, results: list[Result], lag: LagRun | None) -> None:
    print(f"\ncatch-up of {args.events} queued events per scenario, batch_max_events="
          f"{args.batch}, document mode, ~1 KB documents; best of {args.repeat}"
          " run(s) per figure\n")
    head = (f"{'scenario':<9}{'events':>8}{'net':>7}{'tailer ev/s':>13}{'C_read ev/s':>13}"
            f"{'C_merge s':>11}{'tailer s':>10}{'ratio':>7}{'sink s':>8}{'own s':>7}"
            f"{'txns':>6}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r.kind:<9}{r.events:>8}{r.net:>7}{r.events / r.t_tail:>13,.0f}"
              f"{r.seen / r.t_read:>13,.0f}{r.t_merge:>11.3f}{r.t_tail:>10.3f}"
              f"{r.t_merge / r.t_tail:>7.3f}{r.t_sink:>8.3f}{r.t_tail - r.t_sink:>7.3f}"
              f"{r.batches:>6}")
    cpu_head = (f"{'scenario':<9}{'tailer s':>10}{'tailer CPU':>12}{'sandbox CPU':>13}"
                f"{'PG CPU':>8}{'busy':>7}{'C_merge s':>11}{'PG CPU':>8}")
    print(f"\nCPU seconds during catch-up (busy = all three / tailer s; 2.0 = both cores)"
          f"\n\n{cpu_head}\n{'-' * len(cpu_head)}")
    for r in results:
        tail_cpu, sandbox_cpu, pg_cpu = r.cpu
        print(f"{r.kind:<9}{r.t_tail:>10.3f}{tail_cpu:>12.2f}{sandbox_cpu:>13.2f}"
              f"{pg_cpu:>8.2f}{sum(r.cpu) / r.t_tail:>7.2f}{r.t_merge:>11.3f}"
              f"{r.cpu_merge:>8.2f}")
    print("\nratio = C_merge seconds / tailer seconds for the same net changes (target"
          " >= 0.60); C_read = bare change-stream read of the same events (source"
          " ceiling); sink s = tailer time while the sink stages or commits, own s ="
          " the rest (reading, decoding, batching; reads overlap applies); txns ="
          " batches the tailer committed (C_merge uses ceil(events / batch)).")
    if lag is None:
        return
    if lag.history_lost:
        print(f"\nsteady load: {lag.offered:,.0f} updates/s offered: the tailer fell behind"
              " the sandbox's oplog window (code 286, resync required) — the load is more"
              " than this machine's source, PostgreSQL and tailer can carry together; try a"
              " lower --rate")
        return
    lags = [v for _, v in lag.points]
    print(f"\nsteady load: {lag.offered:,.0f} updates/s offered, "
          f"{lag.written / lag.seconds:,.0f}/s achieved ({lag.written} updates in "
          f"{lag.seconds:.1f} s, {len(lags)} timed writes)")
    if lags:
        first, last, slope = drift(lag.points)
        print(f"lag p50 {pct(lags, 0.5) * 1000:.1f} ms   p99 {pct(lags, 0.99) * 1000:.1f} ms"
              f"   max {max(lags) * 1000:.1f} ms   mean {statistics.fmean(lags) * 1000:.1f} ms"
              "   (target p99 <= 1000 ms)")
        print(f"drift: p99 first third {first * 1000:.1f} ms, last third {last * 1000:.1f} ms;"
              f" slope {slope * 1000:+.1f} ms per minute")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--base", type=int, default=20_000,
                        help="documents present before update/delete scenarios")
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--scenarios", default="insert,update,delete")
    parser.add_argument("--lag-seconds", type=float, default=10.0,
                        help="steady-load run length (0: none; 120 for the 2-minute run)")
    parser.add_argument("--load", type=float, default=0.5,
                        help="offered load as a share of the update catch-up rate")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="offered updates/s (overrides --load)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1,
                        help="catch-up runs per scenario; the fastest tailer and the fastest"
                             " C_merge are shown (noise only slows)")
    parser.add_argument("--oplog-entries", type=int, default=400_000,
                        help="the sandbox's oplog size: how far the tailer may fall behind")
    args = parser.parse_args()
    # The oplog only needs to hold the catch-up backlog; a 2-minute load at several
    # thousand updates/s would otherwise keep ~10^6 entries in the sandbox's memory.
    proc, uri = start_sandbox_process(["--oplog-max-entries", str(args.oplog_entries)])
    pg = TempPostgres()
    dsn = pg.start()
    tune_gc()  # the tailer runs in this process: with the daemon's GC settings
    try:
        anyio.run(run, args, uri, dsn, CpuClock(proc.pid, postmaster_pid(pg)))
    finally:
        pg.stop()
        proc.terminate()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":
    main()
