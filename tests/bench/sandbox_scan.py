"""Full-collection scan rate of the sandbox, as the backfill reads it.

Starts the sandbox in a separate process (``python -m ops sandbox --port 0``), loads
``--docs`` documents of about 1 KB, then reads them all with ``find`` sorted by ``_id``
with ``hint: _id_`` and ``batchSize`` 1000 (first batch + ``getMore`` until the cursor
is exhausted) into ``RawBSONDocument``s, best of ``--rounds``. The ceiling beside it is
the same client decoding the same bytes without a server (``bson.decode_all`` of
1000-document batches into ``RawBSONDocument``), so the ratio shows how close the
server comes to what the client side alone costs. Target: ≥ 50,000 docs/s.

    python -m tests.bench.sandbox_scan [--docs 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient

TARGET = 50_000


def _doc(i: int) -> dict[str, object]:
    return {"_id": i, "name": f"user-{i}", "n": i * 7, "tags": ["a", "b", "c"],
            "payload": "x" * 900}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    proc = subprocess.Popen([sys.executable, "-m", "ops", "sandbox", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        uri = proc.stdout.readline().strip()
        raw_opts: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument)
        client: MongoClient[RawBSONDocument] = MongoClient(uri, document_class=RawBSONDocument)
        coll: Any = client.bench.scan
        coll.drop()
        for start in range(0, args.docs, 10_000):
            coll.insert_many([_doc(i) for i in range(start, min(args.docs, start + 10_000))],
                             ordered=True)
        avg = len(bson.encode(_doc(0)))
        best = 0.0
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            n = sum(1 for _ in coll.find({}, batch_size=1000).sort("_id", 1).hint("_id_"))
            elapsed = time.perf_counter() - t0
            assert n == args.docs, n
            best = max(best, n / elapsed)
        batch = b"".join(bson.encode(_doc(i)) for i in range(1000))
        t0 = time.perf_counter()
        rounds = max(1, args.docs // 1000)
        for _ in range(rounds):
            docs = bson.decode_all(batch, raw_opts)
            sum(1 for _ in docs)
        ceiling = rounds * 1000 / (time.perf_counter() - t0)
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    print(f"documents            {args.docs:>12,}  (~{avg} bytes each)")
    print(f"sandbox scan         {best:>12,.0f} docs/s  (find+getMore, batchSize 1000)")
    print(f"client-only ceiling  {ceiling:>12,.0f} docs/s  (decode the same bytes, no server)")
    print(f"ratio scan/ceiling   {best / ceiling:>12.3f}")
    print(f"target               {TARGET:>12,} docs/s  -> {'met' if best >= TARGET else 'MISSED'}")
    return 0 if best >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
