"""Cost of the document → row mapping per document, in µs, against ceilings.

Maps a realistic ~1 KB nested document (ObjectId _id, strings, int32/int64, doubles,
dates, a nested address, an array of 8 sub-documents) with the document-mode and
column-mode mappers, best of ``--rounds`` runs of ``--docs`` calls each. Ceilings, in
the same run on the same machine: ``bson.decode`` alone (every mapping must decode once)
and ``bson.decode`` + ``msgspec.json.encode`` with no Extended JSON hook (the least a
jsonb mapping can do). For reference, pymongo's ``bson.json_util.dumps`` is timed too.
Target: document mode at most a few µs above the decode ceiling, so the sink can reach
100,000 rows per CPU-second end to end.

A second table times the batch fast path, ``copy_rows`` (raw BSON straight to binary
COPY streams in C), against ``map_document`` called per document (which still leaves
asyncpg to encode the records), on the ~1 KB orders of the sink benchmark
(``tests.bench.sink.make_doc``, its column-mode rule), with ObjectId and integer
``_id``s, in batches of ``--batch`` documents.

    python -m tests.bench.mapping [--docs 20000] [--rounds 5] [--batch 1000]
"""

from __future__ import annotations

import argparse
import datetime
import random
import time
from collections.abc import Callable
from typing import Any

import bson
import msgspec
from bson import json_util
from bson.int64 import Int64
from bson.objectid import ObjectId

from cdc.mapping import ChildRule, ColumnRule, MappingConfig, MappingRule, resolve
from cdc.mapping.columns import ColumnMapper
from cdc.mapping.document import DocumentMapper
from cdc.mapping.ejson import DECODE_OPTIONS
from tests.bench.sink import MAPPING as SINK_MAPPING
from tests.bench.sink import NS_COL, make_doc


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
    parser.add_argument("--batch", type=int, default=1000)
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
    _batch_table(args.docs, args.rounds, args.batch)
    return 0


def _batch_table(docs: int, rounds: int, batch: int) -> None:
    """copy_rows per document against map_document, on the sink benchmark's orders."""
    rng = random.Random(1)
    batch = max(1, min(batch, docs))
    repeat = max(1, docs // batch)
    oid_raws = [bson.encode(make_doc(i, rng)) for i in range(batch)]
    int_raws = [bson.encode({**make_doc(i, rng), "_id": i}) for i in range(batch)]
    versions = list(range(batch))
    document = resolve(MappingConfig(), "bench.orders_doc")
    column = resolve(SINK_MAPPING, NS_COL)
    assert isinstance(document, DocumentMapper) and isinstance(column, ColumnMapper)
    print(f"\nsink orders: {len(oid_raws[0])} bytes; batches of {batch}; best of {rounds} x "
          f"{repeat * batch} docs (CPU time)")
    print(f"{'':36} {'µs/doc':>8} {'docs/CPU-s':>11} {'x copy_rows':>11}")
    for mode, mapper in (("document", document), ("column", column)):
        for ids, raws in (("ObjectId", oid_raws), ("int", int_raws)):
            result = mapper.copy_rows(raws, versions)
            assert result is not None and not result.left, "fast path left documents"

            def per_doc(raws: list[bytes] = raws, m: DocumentMapper | ColumnMapper = mapper
                        ) -> None:
                for raw in raws:
                    m.map_document(raw)

            def batched(raws: list[bytes] = raws, m: DocumentMapper | ColumnMapper = mapper
                        ) -> None:
                m.copy_rows(raws, versions)

            slow = _best(per_doc, repeat, rounds) / batch
            fast = _best(batched, repeat, rounds) / batch
            for name, us in ((f"{mode}, {ids} _id: map_document", slow),
                             (f"{mode}, {ids} _id: copy_rows", fast)):
                print(f"{name:36} {us:8.2f} {1e6 / us:11,.0f} {us / fast:11.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
