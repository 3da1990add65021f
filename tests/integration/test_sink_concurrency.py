"""Concurrent writers (a change stream with deletes, two backfill workers) converge.

Each worker holds a read lease from before anything is applied (so before any of its
labels could be taken) until its last batch has committed, and closes it then: the
stream's deletes leave tombstones while a worker is still copying, and none after."""

from __future__ import annotations

import random
from typing import Any

import anyio
import anyio.lowlevel
import bson
import pytest

from cdc.batch import Batch, Change, Op, Origin
from cdc.errors import TargetUnavailable
from cdc.sink import Sink
from tests.integration.sink_support import (
    CONTROL,
    NS,
    id_bson,
    key_of,
    mapper_for,
    rows,
    tombstones,
)

pytestmark = pytest.mark.anyio

KEYS = 300


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _doc(key: int, content: str) -> bytes:
    return bson.encode({"_id": key, "c": content})


async def _apply_all(sink: Sink, batches: list[Batch], reader: int | None = None) -> None:
    for batch in batches:
        batch.reader = reader
        while True:
            try:
                await sink.apply(batch)
                break
            except TargetUnavailable:  # a deadlock between writers: retry the batch
                await anyio.lowlevel.checkpoint()
    if reader is not None:
        await sink.close_reader(reader)


async def test_stream_and_parallel_backfill_converge_whatever_the_interleaving(
    pg_dsn: str,
) -> None:
    rnd = random.Random(20261130)
    state: dict[int, str | None] = {k: f"init{k}" if k % 3 else None for k in range(KEYS)}
    history: list[tuple[int, dict[int, str | None]]] = [(1000, dict(state))]
    stream: list[Change] = []
    for n in range(2000):
        version = 1001 + n
        key = rnd.randrange(KEYS)
        if rnd.random() < 0.3:
            state[key] = None
            stream.append(Change(NS, id_bson(key), version, Op.DELETE))
        else:
            content = state[key] = f"v{version}"
            stream.append(Change(NS, id_bson(key), version, Op.UPSERT, _doc(key, content)))
        history.append((version, dict(state)))
    final = state
    # Backfill: every key read at a random time, labelled with the read's start time.
    copies: list[Change] = []
    for key in range(KEYS):
        label = rnd.randrange(len(history))
        read = history[min(label + rnd.randrange(50), len(history) - 1)][1][key]
        if read is not None:
            copies.append(Change(NS, id_bson(key), history[label][0], Op.UPSERT,
                                 _doc(key, read), Origin.BACKFILL))
    stream_batches = [Batch(stream[i:i + 50]) for i in range(0, len(stream), 50)]
    half = len(copies) // 2
    workers = [[Batch(part[i:i + 40]) for i in range(0, len(part), 40)]
               for part in (copies[:half], copies[half:])]

    sink = await Sink.open(pg_dsn, CONTROL, mapper_for, max_size=4)
    try:
        leases = [await sink.open_reader(NS, f"worker {n}", 3600) for n in range(2)]
        async with anyio.create_task_group() as tg:
            tg.start_soon(_apply_all, sink, stream_batches)
            for batches, lease in zip(workers, leases, strict=True):
                tg.start_soon(_apply_all, sink, batches, lease)
    finally:
        await sink.close()

    last: dict[int, Change] = {}
    for c in stream:
        last[bson.decode(c.id_bson)["_id"]] = c
    expected_rows: dict[bytes, tuple[dict[str, Any], int]] = {}
    for key, final_content in final.items():
        if final_content is None:
            continue
        copy = next((c for c in copies if bson.decode(c.id_bson)["_id"] == key), None)
        newest = [c.version for c in (last.get(key), copy) if c is not None]
        expected_rows[key_of(key)] = ({"_id": key, "c": final_content}, max(newest))
    assert rows(pg_dsn) == expected_rows
    # A tombstone only for a deleted document, at most as new as its last delete.
    deleted = {key_of(k): c.version for k, c in last.items() if c.op is Op.DELETE}
    assert all(key in deleted and v <= deleted[key] for key, v in tombstones(pg_dsn).items())
