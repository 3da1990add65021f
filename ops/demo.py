"""``make demo``: a live migration end to end, on this machine, in a few minutes.

What it does, in order:

1. starts the MongoDB sandbox (in this process, on a free port) and loads a generated
   dataset — several collections with nested documents, arrays and mixed ``_id`` types,
   200k documents by default — as pre-encoded raw BSON batches (``insert_many``);
2. starts a throwaway PostgreSQL (:class:`ops.pgtemp.TempPostgres`);
3. starts ``mongo2pg run`` as a separate process, and a writer thread that keeps
   inserting, updating and deleting documents while the daemon backfills and streams;
4. prints one status line per second from the daemon's ``/metrics`` (phase, backfill
   progress, copy rate, stream lag, events applied, writer operations);
5. stops the writer a few seconds after the backfill is done, waits until the daemon
   has applied everything up to the source's last operation and is ``in_sync``, stops
   the daemon with SIGTERM (it must exit 0);
6. compares both sides document by document through the mapping (:mod:`ops.compare`)
   and prints a summary. Exit code 0 only when there are no mismatches.
"""

from __future__ import annotations

import argparse
import datetime
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import bson
import psycopg
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient

from cdc.cursor import operation_time
from cdc.mapping import MappingConfig, resolve
from cdc.types import Namespace
from ops.compare import compare_all
from ops.pgtemp import TempPostgres, free_port
from ops.sandbox import start_sandbox

CONTROL = "mongo2pg"
# (collection, share of the documents)
LAYOUT = (("shop.orders", 0.5), ("shop.customers", 0.2), ("shop.events", 0.2),
          ("crm.contacts", 0.1))
INCLUDE = ("shop.*", "crm.contacts")


def _order(i: int, rnd: random.Random) -> dict[str, Any]:
    return {"_id": ObjectId(), "customer": {"name": f"customer {i}", "address": {
        "city": rnd.choice(["Lyon", "Oslo", "Quito", "Pune"]), "zip": f"{i % 99999:05d}"}},
        "items": [{"sku": f"sku-{rnd.randrange(1000)}", "qty": rnd.randrange(1, 5),
                   "price": round(rnd.random() * 100, 2)} for _ in range(rnd.randrange(1, 4))],
        "created": datetime.datetime(2024, 1, 1) + datetime.timedelta(minutes=i),
        "total": Int64(i * 37 % 100_000), "paid": i % 3 == 0}


def _customer(i: int, rnd: random.Random) -> dict[str, Any]:
    return {"_id": f"cust-{i:07d}", "email": f"user{i}@example.com",
            "tags": rnd.sample(["vip", "new", "eu", "b2b", "churn"], 2),
            "prefs": {"lang": "en", "news": bool(i % 2)}}


def _event(i: int, rnd: random.Random) -> dict[str, Any]:
    # Mixed _id types in one collection: ints, strings, ObjectIds, dates.
    kind = i % 4
    _id: Any = (i, f"evt-{i:07d}", ObjectId(),
                datetime.datetime(2020, 1, 1) + datetime.timedelta(seconds=i))[kind]
    return {"_id": _id, "type": rnd.choice(["click", "view", "buy"]),
            "payload": {"n": i, "path": [rnd.randrange(10) for _ in range(3)]}}


def _contact(i: int, rnd: random.Random) -> dict[str, Any]:
    return {"_id": i, "name": f"contact {i}",
            "phones": [{"kind": "mobile", "number": f"+1-555-{i:07d}"}], "score": rnd.random()}


MAKERS = {"shop.orders": _order, "shop.customers": _customer, "shop.events": _event,
          "crm.contacts": _contact}


def load_dataset(mongo: MongoClient[Any], total: int) -> dict[str, list[Any]]:
    """Insert ``total`` generated documents; returns the ``_id`` values per namespace."""
    rnd = random.Random(7)
    ids: dict[str, list[Any]] = {}
    for name, share in LAYOUT:
        ns = Namespace.parse(name)
        n = int(total * share)
        make = MAKERS[name]
        coll = mongo[ns.db][ns.coll]
        batch: list[RawBSONDocument] = []
        ids[name] = []
        for i in range(n):
            doc = make(i, rnd)
            ids[name].append(doc["_id"])
            batch.append(RawBSONDocument(bson.encode(doc)))
            if len(batch) == 5000:
                coll.insert_many(batch, ordered=False)
                batch = []
        if batch:
            coll.insert_many(batch, ordered=False)
    return ids


class Writer(threading.Thread):
    """Keeps changing the source: inserts, updates (nested fields, arrays), deletes."""

    def __init__(self, uri: str, ids: dict[str, list[Any]], rate: float) -> None:
        super().__init__(daemon=True)
        self.mongo: MongoClient[dict[str, Any]] = MongoClient(uri)
        self.ids = ids
        self.rate = rate
        self.stop_flag = threading.Event()
        self.inserts = self.updates = self.deletes = 0
        self.error: BaseException | None = None

    @property
    def ops(self) -> int:
        return self.inserts + self.updates + self.deletes

    def run(self) -> None:
        rnd = random.Random(11)
        next_id = {name: len(ids) for name, ids in self.ids.items()}
        try:
            while not self.stop_flag.is_set():
                start = time.monotonic()
                name = rnd.choice([n for n, _ in LAYOUT])
                ns = Namespace.parse(name)
                coll = self.mongo[ns.db][ns.coll]
                action = rnd.random()
                known = self.ids[name]
                if action < 0.4 or len(known) < 10:
                    docs = [MAKERS[name](next_id[name] + k, rnd) for k in range(5)]
                    next_id[name] += 5
                    coll.insert_many(docs)
                    known.extend(d["_id"] for d in docs)
                    self.inserts += 5
                elif action < 0.8:
                    for _ in range(5):
                        coll.update_one({"_id": rnd.choice(known)}, {
                            "$set": {"demo.touched": rnd.randrange(1000)},
                            "$push": {"demo.history": rnd.randrange(100)}})
                    self.updates += 5
                else:
                    victims = []
                    for _ in range(3):
                        k = rnd.randrange(len(known))
                        known[k], known[-1] = known[-1], known[k]
                        victims.append(known.pop())
                    coll.delete_many({"_id": {"$in": victims}})
                    self.deletes += len(victims)
                spent = time.monotonic() - start
                self.stop_flag.wait(max(0.0, 10 / self.rate - spent))
        except BaseException as exc:  # reported by the demo, which then fails
            self.error = exc
        finally:
            self.mongo.close()


def scrape(port: int) -> dict[str, float]:
    """The daemon's metrics as ``{'name{labels}': value}`` (empty if unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("mongo2pg_"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


def _sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.split("{")[0] == prefix)


def _phase(metrics: dict[str, float]) -> str:
    for k, v in metrics.items():
        if k.startswith("mongo2pg_phase{") and v == 1:
            return k.split('"')[1]
    return "?"


def status_line(m: dict[str, float], writer: Writer, elapsed: float) -> str:
    est = _sum(m, "mongo2pg_backfill_estimated_documents")
    copied = _sum(m, "mongo2pg_backfill_copied_documents")
    ratio = min(1.0, copied / est) if est else 0.0
    return (f"[{elapsed:5.1f}s] phase={_phase(m):12s} backfill {ratio * 100:5.1f}% "
            f"({int(copied):,}/{int(est):,} docs) "
            f"lag={_sum(m, 'mongo2pg_stream_lag_seconds'):.0f}s "
            f"events applied={int(_sum(m, 'mongo2pg_stream_events_applied_total')):,} "
            f"writer ops={writer.ops:,}")


def _checkpoint(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f"SELECT max(cluster_time) FROM {CONTROL}.checkpoints").fetchone()  # noqa: S608
        return int(row[0]) if row and row[0] is not None else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.demo", description=__doc__)
    parser.add_argument("--documents", type=int, default=200_000)
    parser.add_argument("--writer-rate", type=float, default=300.0,
                        help="writer operations per second (about)")
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="mongo2pg-demo-"))
    sandbox = start_sandbox(port=0)
    pg = TempPostgres()
    daemon: subprocess.Popen[bytes] | None = None
    writer: Writer | None = None
    try:
        dsn = pg.start()
        print(f"sandbox (MongoDB stand-in) at {sandbox.uri}; throwaway PostgreSQL on port "
              f"{pg.port}")
        mongo: MongoClient[dict[str, Any]] = MongoClient(sandbox.uri)
        ids = load_dataset(mongo, args.documents)
        print(f"loaded {sum(len(v) for v in ids.values()):,} documents in "
              f"{time.monotonic() - t0:.1f}s: " + ", ".join(f"{k}={len(v):,}"
                                                           for k, v in ids.items()))

        port = free_port()
        config = workdir / "demo.toml"
        config.write_text(f"""
[metrics]
port = {port}
[log]
level = "warning"
[backfill]
workers = {args.workers}
chunk_documents = 10000
[phases]
in_sync_lag_seconds = 2
check_interval_seconds = 0.5
[daemon]
progress = "off"
""")
        log_path = workdir / "daemon.log"
        cmd = [sys.executable, "-m", "ops", "run", "--config", str(config), "--source",
               sandbox.uri, "--target", dsn]
        for pattern in INCLUDE:
            cmd += ["--include", pattern]
        started = time.monotonic()
        with log_path.open("wb") as log_file:
            daemon = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        print(f"mongo2pg run started (pid {daemon.pid}); metrics on :{port}")
        writer = Writer(sandbox.uri, ids, args.writer_rate)
        writer.start()

        backfill_done_at: float | None = None
        while True:
            time.sleep(1)
            if daemon.poll() is not None:
                print(log_path.read_text()[-3000:])
                raise SystemExit(f"daemon exited early with {daemon.returncode}")
            m = scrape(port)
            print(status_line(m, writer, time.monotonic() - started), flush=True)
            if backfill_done_at is None and _phase(m) in ("catching_up", "in_sync"):
                backfill_done_at = time.monotonic()
                print(f"backfill done in {backfill_done_at - started:.1f}s; "
                      "the writer keeps going for 5 s")
            if backfill_done_at is not None and time.monotonic() - backfill_done_at > 5:
                break
        writer.stop_flag.set()
        writer.join(10)
        if writer.error is not None:
            raise SystemExit(f"writer failed: {writer.error!r}")
        last = operation_time(mongo.admin.command("ping"))
        assert last is not None
        print(f"writer stopped after {writer.ops:,} operations; waiting for catch-up")
        deadline = time.monotonic() + 120
        caught_up_at: float | None = None
        while True:
            m = scrape(port)
            if _checkpoint(dsn) >= last.packed and _phase(m) == "in_sync":
                caught_up_at = caught_up_at or time.monotonic()
                # The lag gauge is refreshed on its own schedule: give it a few seconds
                # to show the idle source (0 s), then report whatever it reads.
                lag = _sum(m, "mongo2pg_stream_lag_seconds")
                if lag == 0 or time.monotonic() - caught_up_at > 5:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("daemon did not catch up within 120 s")
            time.sleep(0.5)
        final = scrape(port)
        final_lag = _sum(final, "mongo2pg_stream_lag_seconds")
        events = int(_sum(final, "mongo2pg_stream_events_applied_total"))
        copied = int(_sum(final, "mongo2pg_backfill_copied_documents"))
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(60)
        elapsed = time.monotonic() - started
        print(f"daemon stopped with SIGTERM, exit code {rc}")

        print("comparing both sides document by document through the mapping …")
        mapping = MappingConfig()
        namespaces = [Namespace.parse(n) for n, _ in LAYOUT]
        result = compare_all(mongo, dsn, namespaces, lambda ns: resolve(mapping, ns))
        mongo.close()
        for t in result.tables:
            print(f"  {t.table:20s} source rows {t.source_rows:>8,}  target rows "
                  f"{t.target_rows:>8,}  missing {t.missing}  extra {t.extra}")
        print()
        print("summary")
        print(f"  documents copied by the backfill  {copied:,}")
        print(f"  change events applied             {events:,}  (writer: {writer.inserts:,} "
              f"inserts, {writer.updates:,} updates, {writer.deletes:,} deletes)")
        print(f"  migration time                    {elapsed:.1f}s "
              f"(backfill {(backfill_done_at or started) - started:.1f}s)")
        print(f"  final lag                         {final_lag:.0f}s")
        print(f"  documents compared                {result.documents:,}")
        print(f"  mismatches                        {result.mismatches}")
        ok = result.mismatches == 0 and rc == 0 and result.unmappable == 0
        print("RESULT: " + ("OK — both sides are equal" if ok else "MISMATCH"))
        return 0 if ok else 1
    finally:
        if writer is not None:
            writer.stop_flag.set()
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        pg.stop()
        sandbox.stop()


if __name__ == "__main__":
    sys.exit(main())
