"""Backfill throughput of ``mongo2pg run`` against a ceiling measured in the same run.

Starts the sandbox in a separate process (``python -m ops sandbox --port 0``) and a
throwaway PostgreSQL, loads ``--docs`` documents of about 1 KB (200k by default; pass
``--docs 2000000`` for the large run), then runs ``mongo2pg run`` (a separate process,
``--workers`` backfill workers, default document mapping) until the phase leaves
``backfilling``. Measured:

* rows/s of the backfill (documents / wall time from process start to backfill done);
* the daemon's CPU seconds (``/proc/<pid>/stat`` utime+stime) → rows per CPU-second;
* the daemon's peak RSS (``VmHWM``), and the sandbox's CPU seconds over the same span
  (the sandbox is single-threaded Python: when it is near the wall time, it is the
  bottleneck, not the daemon);
* C_sink: binary COPY (asyncpg) of exactly the rows the daemon wrote (read back from
  the target table, all columns including ``_m2p_version``) into an empty table of the
  same shape — the PostgreSQL ceiling for writing those rows;
* the time ratio daemon / C_sink.

    python -m tests.bench.backfill [--docs 200000] [--workers 3]
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


def _phase(dsn: str) -> str | None:
    try:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(f"SELECT phase FROM {CONTROL}.phase").fetchone()  # noqa: S608
            return None if row is None else str(row[0])
    except psycopg.Error:
        return None


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args(argv)
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
        for start in range(0, args.docs, 10_000):
            coll.insert_many([RawBSONDocument(bson.encode(_doc(i)))
                              for i in range(start, min(args.docs, start + 10_000))],
                             ordered=False)
        avg = len(bson.encode(_doc(0)))
        print(f"loaded {args.docs:,} documents of {avg} B in {time.perf_counter() - t0:.1f}s")
        cmd = [sys.executable, "-m", "ops", "run", "--source", uri, "--target", dsn,
               "--include", "bench.docs", "--workers", str(args.workers),
               "--metrics-port", str(free_port())]
        sandbox_cpu0 = _cpu_seconds(sandbox.pid)
        launched = time.perf_counter()
        daemon = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        while _phase(dsn) in (None, "init", "backfilling"):
            if daemon.poll() is not None:
                raise SystemExit(f"daemon exited with {daemon.returncode}")
            time.sleep(0.2)
        elapsed = time.perf_counter() - launched
        cpu = _cpu_seconds(daemon.pid)
        sandbox_cpu = _cpu_seconds(sandbox.pid) - sandbox_cpu0
        rss = _peak_rss_mb(daemon.pid)
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(60)
        rows, copy_s = anyio.run(_copy_ceiling, dsn, "bench.docs")
        assert rows == args.docs, rows
        rate = rows / elapsed
        ceiling = rows / copy_s
        print()
        print(f"{'measure':32s} {'value':>14s}")
        print(f"{'documents':32s} {rows:>14,}")
        print(f"{'backfill wall time (s)':32s} {elapsed:>14.1f}")
        print(f"{'backfill rows/s':32s} {rate:>14,.0f}")
        print(f"{'C_sink COPY rows/s':32s} {ceiling:>14,.0f}")
        print(f"{'ratio rows/s vs C_sink':32s} {rate / ceiling:>14.3f}")
        print(f"{'time ratio (daemon / C_sink)':32s} {elapsed / copy_s:>14.1f}")
        print(f"{'daemon CPU seconds':32s} {cpu:>14.1f}")
        print(f"{'rows per daemon CPU-second':32s} {rows / cpu:>14,.0f}")
        print(f"{'sandbox CPU seconds (same span)':32s} {sandbox_cpu:>14.1f}")
        print(f"{'daemon peak RSS (MB)':32s} {rss:>14.0f}")
        print(f"{'daemon exit code (SIGTERM)':32s} {rc:>14d}")
        return 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        sandbox.terminate()
        sandbox.wait(10)
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
