"""The sink's C path (binary COPY streams from ``copy_rows``) and its Python path give
the same tables, tombstones, counts and dead letters for random batch sequences (column
mode with children, several namespaces per batch, id collisions, dead letters, direct
and staged paths, streams sent whole or in pieces)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import bson
import psycopg
import pytest
from psycopg import sql

from cdc.batch import Batch, Change, Op, Origin
from cdc.mapping import ChildRule, ColumnRule, MappingConfig, MappingRule, resolve
from cdc.sink import Sink
from cdc.sink import sink as sink_module
from cdc.sink.plan import NamespacePlan
from cdc.types import Namespace
from tests.integration.sink_support import CONTROL, LeasedSink, documents, id_bson

pytestmark = pytest.mark.anyio

FAST = [Namespace("fa", "orders"), Namespace("fb", "orders")]
SLOW = [Namespace("sa", "orders"), Namespace("sb", "orders")]
CONFIG = MappingConfig(rules=tuple(MappingRule(
    namespace=str(ns), mode="column", columns=(ColumnRule("c", "text"),),
    children=(ChildRule("items", "orders_items", columns=(ColumnRule("n", "bigint"),)),),
) for ns in FAST + SLOW))


class _NoFast:
    """A mapper without copy_rows: the sink takes the Python path."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def tables(self) -> Any:
        return self._inner.tables()

    def map_key(self, b: bytes) -> bytes:
        return bytes(self._inner.map_key(b))

    def map_document(self, raw: bytes) -> Any:
        return self._inner.map_document(raw)

    def to_document(self, rows: Any) -> Any:
        return self._inner.to_document(rows)


def mapper_for(ns: Namespace) -> Any:
    m = resolve(CONFIG, ns)
    return _NoFast(m) if ns in SLOW else m


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sink(pg_dsn: str) -> AsyncIterator[Sink]:
    s = await LeasedSink.open(pg_dsn, CONTROL, mapper_for, max_size=2)
    await s.lease_all(*FAST, *SLOW)
    try:
        yield s
    finally:
        await s.close()


IDS: list[Any] = [1, 1.0, 2, 2.0, 3, "x", 4, 5]


def _doc(rng: random.Random, i: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": i}
    r = rng.random()
    if r < 0.05:
        doc["c"] = "bad\x00nul"  # dead letter
    elif r < 0.1:
        doc["c"] = 7  # not text: Python decides
    else:
        doc["c"] = rng.choice(["p", "q", None])
    k = rng.randrange(4)
    if k:
        doc["items"] = [{"n": rng.randrange(100), "o": j} for j in range(k)]
    doc["w"] = rng.randrange(1000)
    return doc


def _script(rng: random.Random) -> list[list[tuple[int, str, Any, int, Origin, dict[str, Any]]]]:
    batches = []
    for _ in range(rng.randrange(2, 7)):
        batch = []
        backfill_only = rng.random() < 0.4
        nss = [0] if rng.random() < 0.6 else [0, 1]
        for _ in range(rng.randrange(1, 8)):
            nsi = rng.choice(nss)
            i = rng.choice(IDS)
            v = rng.randrange(1, 12)
            origin = Origin.BACKFILL if backfill_only or rng.random() < 0.3 else Origin.STREAM
            op = "u" if backfill_only or rng.random() < 0.7 else "d"
            batch.append((nsi, op, i, v, origin, _doc(rng, i)))
        batches.append(batch)
    return batches


def _change(ns: Namespace, op: str, i: Any, v: int, origin: Origin, doc: dict[str, Any]
            ) -> Change:
    if op == "u":
        return Change(ns, id_bson(i), v, Op.UPSERT, bson.encode(doc), origin)
    return Change(ns, id_bson(i), v, Op.DELETE, None, origin)


def _state(dsn: str, ns: Namespace) -> tuple[Any, Any, Any]:
    docs = documents(dsn, resolve(CONFIG, ns))
    with psycopg.connect(dsn) as conn:
        tombs = sorted((bytes(k), v) for k, v in conn.execute(sql.SQL(
            "SELECT key, version FROM {}.tombstones WHERE table_name = %s").format(
                sql.Identifier(CONTROL)), (f"{ns.db}.{ns.coll}",)).fetchall())
        letters = sorted((bytes(i), v, r) for i, v, r in conn.execute(sql.SQL(
            "SELECT id_bson, version, reason FROM {}.dead_letters WHERE namespace = %s").format(
                sql.Identifier(CONTROL)), (f"{ns.db}.{ns.coll}",)).fetchall())
    return docs, tombs, letters


def _counts(result: Any, ns: Namespace) -> Any:
    return {op: (c.applied, c.skipped, c.dead_lettered)
            for op, c in result.counts.get(str(ns), {}).items()}


@pytest.fixture
def c_path(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, bool]]:
    """(staged, taken) of every C-path attempt for the FAST namespaces."""
    attempts: list[tuple[bool, bool]] = []
    fast_rows = NamespacePlan.fast_rows

    def counted(self: NamespacePlan, *, staged: bool) -> Any:
        rows = fast_rows(self, staged=staged)
        if self.namespace in FAST:
            attempts.append((staged, rows is not None))
        return rows

    monkeypatch.setattr(NamespacePlan, "fast_rows", counted)
    return attempts


@pytest.mark.parametrize("seed", range(24))
async def test_c_path_equals_python_path(sink: Sink, pg_dsn: str, seed: int,
                                         c_path: list[tuple[bool, bool]],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if seed % 2:  # every other run sends the streams in 64-byte CopyData pieces
        monkeypatch.setattr(sink_module, "_COPY_PIECE", 64)
    rng = random.Random(seed)
    script = _script(rng)
    for ns in FAST + SLOW:
        await sink._ensure(ns)
    for n, batch in enumerate(script):
        for group in (FAST, SLOW):
            changes = [_change(group[nsi], *rest) for nsi, *rest in batch]
            result = await sink.apply(Batch(changes))
            if group is FAST:
                fast_counts = [_counts(result, ns) for ns in FAST]
            else:
                slow_counts = [_counts(result, ns) for ns in SLOW]
        assert fast_counts == slow_counts, (seed, n, batch)
    for f, s in zip(FAST, SLOW, strict=True):
        assert _state(pg_dsn, f) == _state(pg_dsn, s), seed
    if seed in (0, 1):  # scripts of these seeds are known to reach the C path
        assert any(taken for _, taken in c_path), "the C path was never taken"


async def test_clean_batches_take_the_c_path_direct_then_staged(
    sink: Sink, pg_dsn: str, c_path: list[tuple[bool, bool]]
) -> None:
    rng = random.Random(5)
    clean = [{"_id": i, "c": "p", "items": [{"n": i, "o": 0}] * (i % 3), "w": i}
             for i in range(40)]
    backfill = [("u", d["_id"], 3, Origin.BACKFILL, d) for d in clean]
    stream = [("u", d["_id"], 9, Origin.STREAM, {**d, "w": -1, "items": []})
              for d in rng.sample(clean[:30], 10)]
    stream += [("d", d["_id"], 9, Origin.STREAM, d) for d in clean[30:35]]
    for batch in (backfill, stream):
        for group in (FAST, SLOW):
            await sink.apply(Batch([_change(group[0], *change) for change in batch]))
    assert c_path == [(False, True), (True, True)]  # direct, then staged
    assert _state(pg_dsn, FAST[0]) == _state(pg_dsn, SLOW[0])
