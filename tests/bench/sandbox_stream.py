"""Change-stream read rate of the sandbox, as the tailer reads it.

Starts the sandbox in a separate process (``python -m ops sandbox --port 0``), writes
``--events`` changes of documents of about 1 KB to ``bench.s`` (plus one write in ten
to an unwatched ``bench.noise``), then reads them back the way :mod:`cdc.cursor` does:
``aggregate: 1`` on the database with ``$changeStream {fullDocument: updateLookup,
startAtOperationTime}``, the tailer's ``$match`` on ``ns``/``operationType``
(:func:`cdc.cursor.namespace_filter`) and ``$changeStreamSplitLargeEvent``, then
``getMore`` with ``batchSize`` 5000, every reply decoded as ``RawBSONDocument``. It
reports events/s for three mixes — inserts, updates (``$set`` of one field, each
event carrying the looked-up ~1 KB document) and deletes — best of ``--rounds``
(each round opens a new stream on the same oplog). The ceiling beside each is the
sandbox's cheapest read path over the same connection: a ``find`` of the same number of
~1 KB documents with ``batchSize`` 5000, so the ratio shows what building and filtering
events costs on top of shipping bytes. Target: ≥ 40,000 insert events/s.

    python -m tests.bench.sandbox_stream [--events 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

from bson.codec_options import CodecOptions
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from bson.son import SON
from bson.timestamp import Timestamp
from pymongo import InsertOne, MongoClient, UpdateOne

from cdc.cursor import namespace_filter

TARGET = 40_000
BATCH = 5000
RAW: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument)
Client = MongoClient[RawBSONDocument]


def _doc(i: int) -> dict[str, object]:
    return {"_id": i, "name": f"user-{i}", "n": i * 7, "tags": ["a", "b", "c"],
            "payload": "x" * 900}


def _read_stream(client: Client, start: Timestamp, n: int) -> float:
    """Seconds to read ``n`` events of ``bench.s`` from ``start`` as the tailer does."""
    db = client.get_database("bench", codec_options=RAW)
    pipeline = [{"$changeStream": {"fullDocument": "updateLookup",
                                   "startAtOperationTime": start}},
                namespace_filter(["bench.s"]), {"$changeStreamSplitLargeEvent": {}}]
    t0 = time.perf_counter()
    reply: Any = db.command(SON([("aggregate", 1), ("pipeline", pipeline),
                                 ("cursor", {"batchSize": BATCH})]), codec_options=RAW)
    cursor = reply["cursor"]
    got = len(list(cursor["firstBatch"]))
    cursor_id = int(cursor["id"])
    while got < n:
        reply = db.command(SON([("getMore", Int64(cursor_id)), ("collection", "$cmd.aggregate"),
                                ("batchSize", BATCH), ("maxTimeMS", 1000)]), codec_options=RAW)
        batch = list(reply["cursor"]["nextBatch"])
        assert batch, f"stream stalled after {got} of {n} events"
        got += len(batch)
    elapsed = time.perf_counter() - t0
    assert got == n, (got, n)
    db.command("killCursors", "$cmd.aggregate", cursors=[Int64(cursor_id)])
    return elapsed


def _read_find(client: Client, n: int) -> float:
    coll = client.get_database("bench", codec_options=RAW).scan
    t0 = time.perf_counter()
    got = sum(1 for _ in coll.find({}, batch_size=BATCH).sort("_id", 1).limit(n))
    elapsed = time.perf_counter() - t0
    assert got == n, (got, n)
    return elapsed


def _write(client: MongoClient[dict[str, Any]], mix: str, n: int) -> Timestamp:
    """Apply ``n`` watched changes of one kind; returns the cluster time before them."""
    db = client.bench
    start = db.command("ping")["operationTime"]
    ops: list[Any] = []
    noise = 0
    for i in range(n):
        if mix == "insert":
            ops.append(InsertOne(_doc(i)))
        elif mix == "update":
            ops.append(UpdateOne({"_id": i}, {"$set": {"n": -i - 1}}))
        if i % 10 == 9:
            noise += 1
    if mix == "delete":
        db.s.delete_many({})
    else:
        for lo in range(0, len(ops), 10_000):
            db.s.bulk_write(ops[lo:lo + 10_000], ordered=True)
    db.noise.insert_many([{"_id": f"{mix}-{k}", "pad": "y" * 100} for k in range(noise)])
    return Timestamp(start.time, start.inc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    n = args.events
    proc = subprocess.Popen([sys.executable, "-m", "ops", "sandbox", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    rates: dict[str, tuple[float, float]] = {}
    try:
        assert proc.stdout is not None
        uri = proc.stdout.readline().strip()
        client: Client = MongoClient(uri, document_class=RawBSONDocument)
        writer: MongoClient[dict[str, Any]] = MongoClient(uri)
        writer.bench.scan.insert_many([_doc(i) for i in range(n)])
        for mix in ("insert", "update", "delete"):
            start = _write(writer, mix, n)
            best = min(_read_stream(client, start, n) for _ in range(args.rounds))
            ceiling = min(_read_find(client, n) for _ in range(args.rounds))
            rates[mix] = (n / best, n / ceiling)
        client.close()
        writer.close()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    print(f"events per mix       {n:>12,}  (~1 KB documents; +10% unwatched noise)")
    for mix, (rate, ceiling) in rates.items():
        print(f"{mix:<7} stream       {rate:>12,.0f} events/s   find ceiling "
              f"{ceiling:>10,.0f} docs/s   ratio {rate / ceiling:.3f}")
    insert = rates["insert"][0]
    print(f"target               {TARGET:>12,} insert events/s  -> "
          f"{'met' if insert >= TARGET else 'MISSED'}")
    return 0 if insert >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
