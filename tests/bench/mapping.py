"""Cost of the document → row mapping per document, in µs, against ceilings.

Maps a realistic ~1 KB nested document (ObjectId _id, strings, int32/int64, doubles,
dates, a nested address, an array of 8 sub-documents) with the document-mode and
column-mode mappers, best of ``--rounds`` runs of ``--docs`` calls each. Ceilings, in
the same run on the same machine: ``bson.decode`` alone (every mapping must decode once)
and ``bson.decode`` + ``msgspec.json.encode`` with no Extended JSON hook (the least a
jsonb mapping can do). For reference, pymongo's ``bson.json_util.dumps`` is timed too.
Target: document mode at most a few µs above the decode ceiling, so the sink can reach
100,000 rows per CPU-second end to end.

    python -m tests.bench.mapping [--docs 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable
from typing import Any

import bson
import msgspec
from bson import json_util
from bson.int64 import Int64
from bson.objectid import ObjectId

from cdc.mapping import ChildRule, ColumnRule, MappingConfig, MappingRule, resolve
from cdc.mapping.ejson import DECODE_OPTIONS


def sample_document(i: int = 0) -> dict[str, Any]:
    return {
        "_id": ObjectId(),
        "customer": {"name": f"Customer {i}", "email": f"c{i}@example.com", "tier": "gold",
                     "address": {"street": "12 Long Street", "city": "Springfield",
                                 "zip": "12345", "geo": {"lat": 47.3769, "lng": 8.5417}}},
        "status": "shipped",
        "total": 1234.56,
        "count": Int64(8),
        "created": datetime.datetime(2024, 5, 17, 10, 11, 12, 345000),
        "tags": ["priority", "gift", "eu"],
        "items": [{"sku": f"SKU-{i}-{n}", "qty": n + 1, "price": 9.99 * (n + 1),
                   "name": f"Item number {n} with a name"} for n in range(8)],
        "notes": "Leave at the door. " * 3,
    }


def _best(fn: Callable[[], Any], docs: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(docs):
            fn()
        best = min(best, time.process_time() - start)
    return best / docs * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    raw = bson.encode(sample_document())
    document = resolve(MappingConfig(), "bench.orders")
    canonical = resolve(MappingConfig(json="canonical"), "bench.orders")
    column = resolve(MappingConfig(rules=(MappingRule(
        "bench.orders", mode="column",
        columns=(ColumnRule("status", "text"), ColumnRule("total", "double precision"),
                 ColumnRule("created", "timestamptz"), ColumnRule("customer.email", "text")),
        children=(ChildRule("items", "order_items",
                            (ColumnRule("sku", "text"), ColumnRule("qty", "bigint"))),)),)),
        "bench.orders")
    encoder = msgspec.json.Encoder(enc_hook=str)
    rows = [
        ("ceiling: bson.decode", lambda: bson.decode(raw, DECODE_OPTIONS)),
        ("ceiling: decode + msgspec encode",
         lambda: encoder.encode(bson.decode(raw, DECODE_OPTIONS))),
        ("document mode, relaxed", lambda: document.map_document(raw)),
        ("document mode, canonical", lambda: canonical.map_document(raw)),
        ("column mode (4 cols + child)", lambda: column.map_document(raw)),
        ("reference: json_util.dumps", lambda: json_util.dumps(bson.decode(raw))),
    ]
    print(f"document: {len(raw)} bytes; best of {args.rounds} x {args.docs} docs "
          "(CPU time)")
    results = {name: _best(fn, args.docs, args.rounds) for name, fn in rows}
    ceiling = results["ceiling: decode + msgspec encode"]
    print(f"{'':36} {'µs/doc':>8} {'docs/CPU-s':>11} {'x ceiling':>9}")
    for name, us in results.items():
        print(f"{name:36} {us:8.2f} {1e6 / us:11,.0f} {us / ceiling:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
