"""Backfill throughput of ``mongo2pg run`` against a ceiling measured in the same run.

Starts the sandbox in a separate process (``python -m ops sandbox --port 0``) and a
throwaway PostgreSQL, loads ``--docs`` documents of about 1 KB (200k by default; pass
``--docs 200000 2000000`` for the scaling run: each size in its own sandbox and
database, then time(2M)/time(200k) and the peak RSS of both are compared), then runs
``mongo2pg run`` (a separate process, ``--workers`` backfill workers, default document
mapping) until the phase leaves
``backfilling``. Measured:

* rows/s of the backfill (documents / wall time from process start to backfill done);
* the daemon's CPU seconds (``/proc/<pid>/stat`` utime+stime) → rows per CPU-second,
  for the whole process and for the ``backfilling`` phase alone (without the fixed cost
  of starting the interpreter, importing and connecting);
* the daemon's peak RSS (``VmHWM``), and the sandbox's CPU seconds over the same span
  (the sandbox is single-threaded Python: when it is near the wall time, it is the
  bottleneck, not the daemon);
* C_sink: binary COPY (asyncpg) of exactly the rows the daemon wrote (read back from
  the target table, all columns including ``_m2p_version``) into an empty table of the
  same shape — the PostgreSQL ceiling for writing those rows;
* the time ratio daemon / C_sink.

    python -m tests.bench.backfill [--docs 200000 [2000000]] [--workers 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import bson
import psycopg
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient

from cdc.sink.sink import asyncpg_params
from ops.pgtemp import TempPostgres, free_port

CONTROL = "mongo2pg"


def _doc(i: int) -> dict[str, Any]:
    return {"_id": i, "name": f"user-{i}", "n": i * 7, "tags": ["a", "b", "c"],
            "nested": {"city": "Lyon", "zip": f"{i % 99999:05d}"}, "payload": "x" * 850}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _PhaseWatch:
    """The daemon's persisted phase, read over one kept connection (polled every 20 ms
    without a connection set-up each time, which would load the server it measures)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None

    def __call__(self) -> str | None:
        try:
            if self._conn is None:
                self._conn = psycopg.connect(self._dsn, autocommit=True)
            row = self._conn.execute(f"SELECT phase FROM {CONTROL}.phase").fetchone()  # noqa: S608
            return None if row is None else str(row[0])
        except psycopg.Error:
            self.close()
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


async def _copy_ceiling(dsn: str, table: str) -> tuple[int, float]:
    conn = await asyncpg.connect(**asyncpg_params(dsn))
    try:
        rows = await conn.fetch(f"SELECT * FROM {table}")  # noqa: S608
        columns = list(rows[0].keys())
        await conn.execute(f"CREATE TABLE ceiling (LIKE {table} INCLUDING ALL)")
        records = [tuple(r) for r in rows]
        t0 = time.perf_counter()
        await conn.copy_records_to_table("ceiling", records=records, columns=columns)
        return len(records), time.perf_counter() - t0
    finally:
        await conn.close()


class Run:
    """What one backfill of ``docs`` documents measured."""

    def __init__(self, docs: int, load_s: float, elapsed: float, phase_s: float, cpu: float,
                 phase_cpu: float, sandbox_cpu: float, rss: float, copy_s: float,
                 rc: int) -> None:
        self.docs, self.load_s, self.elapsed, self.phase_s = docs, load_s, elapsed, phase_s
        self.cpu, self.phase_cpu, self.sandbox_cpu, self.rss = cpu, phase_cpu, sandbox_cpu, rss
        self.copy_s, self.rc = copy_s, rc


def measure(docs: int, workers: int) -> Run:
    """Load ``docs`` documents into a fresh sandbox, backfill them with ``mongo2pg run``."""
    sandbox = subprocess.Popen([sys.executable, "-m", "ops", "sandbox", "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    pg = TempPostgres()
    daemon: subprocess.Popen[bytes] | None = None
    try:
        assert sandbox.stdout is not None
        uri = sandbox.stdout.readline().strip()
        dsn = pg.start()
        mongo: MongoClient[dict[str, Any]] = MongoClient(uri)
        coll = mongo.bench.docs
        t0 = time.perf_counter()
        for start in range(0, docs, 10_000):
            coll.insert_many([RawBSONDocument(bson.encode(_doc(i)))
                              for i in range(start, min(docs, start + 10_000))],
                             ordered=False)
        load_s = time.perf_counter() - t0
        mongo.close()
        avg = len(bson.encode(_doc(0)))
        print(f"loaded {docs:,} documents of {avg} B in {load_s:.1f}s", flush=True)
        cmd = [sys.executable, "-m", "ops", "run", "--source", uri, "--target", dsn,
               "--include", "bench.docs", "--workers", str(workers),
               "--metrics-port", str(free_port())]
        sandbox_cpu0 = _cpu_seconds(sandbox.pid)
        launched = time.perf_counter()
        daemon = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        # The backfilling phase starts once the change stream is open; it includes the
        # planning. The CPU spent before (interpreter start, imports, connecting) is fixed.
        watch = _PhaseWatch(dsn)
        phase = watch()
        while phase in (None, "init"):
            if daemon.poll() is not None:
                raise SystemExit(f"daemon exited with {daemon.returncode}")
            time.sleep(0.02)
            phase = watch()
        phase_began, cpu_at_phase = time.perf_counter(), _cpu_seconds(daemon.pid)
        while phase == "backfilling":
            if daemon.poll() is not None:
                raise SystemExit(f"daemon exited with {daemon.returncode}")
            time.sleep(0.02)
            phase = watch()
        ended = time.perf_counter()
        watch.close()
        cpu = _cpu_seconds(daemon.pid)
        sandbox_cpu = _cpu_seconds(sandbox.pid) - sandbox_cpu0
        rss = _peak_rss_mb(daemon.pid)
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(60)
        rows, copy_s = anyio.run(_copy_ceiling, dsn, "bench.docs")
        assert rows == docs, rows
        return Run(docs, load_s, ended - launched, ended - phase_began, cpu,
                   cpu - cpu_at_phase, sandbox_cpu, rss, copy_s, rc)
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        sandbox.terminate()
        sandbox.wait(30)
        if sandbox.stdout is not None:
            sandbox.stdout.close()
        pg.stop()


def report(runs: list[Run]) -> None:
    rows: list[tuple[str, str, Any]] = [
        ("documents", ",", lambda r: r.docs),
        ("backfill wall time, from launch (s)", ".1f", lambda r: r.elapsed),
        ("  of which the backfilling phase (s)", ".1f", lambda r: r.phase_s),
        ("backfill rows/s (from launch)", ",.0f", lambda r: r.docs / r.elapsed),
        ("C_sink COPY rows/s", ",.0f", lambda r: r.docs / r.copy_s),
        ("ratio rows/s vs C_sink", ".3f", lambda r: r.copy_s / r.elapsed),
        ("daemon CPU seconds (whole process)", ".1f", lambda r: r.cpu),
        ("rows per daemon CPU-second", ",.0f", lambda r: r.docs / r.cpu),
        ("  same, backfilling phase only", ",.0f", lambda r: r.docs / max(r.phase_cpu, 1e-9)),
        ("sandbox CPU seconds (same span)", ".1f", lambda r: r.sandbox_cpu),
        ("daemon peak RSS (MB)", ".0f", lambda r: r.rss),
        ("daemon exit code (SIGTERM)", "d", lambda r: r.rc),
    ]
    print()
    print(f"{'measure':38s}" + "".join(f"{f'{r.docs:,} docs':>16s}" for r in runs))
    for name, fmt, get in rows:
        print(f"{name:38s}" + "".join(f"{format(get(r), fmt):>16s}" for r in runs))
    if len(runs) > 1:
        small, large = runs[0], runs[-1]
        scale = large.docs / small.docs
        print(f"\ntime({large.docs:,}) / time({small.docs:,}), backfilling phase: "
              f"{large.phase_s / small.phase_s:.2f}; from launch (process start-up"
              f" included): {large.elapsed / small.elapsed:.2f} (documents x{scale:.0f};"
              " target for x10: 9..11)")
        print(f"peak RSS {small.rss:.0f} MB -> {large.rss:.0f} MB (target <= 512 MB, not"
              " growing with the collection)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, nargs="+", default=[200_000],
                        help="collection sizes, one fresh sandbox and database each"
                             " (e.g. --docs 200000 2000000)")
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args(argv)
    runs = [measure(n, args.workers) for n in args.docs]
    report(runs)
    return 0 if all(r.rc == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
