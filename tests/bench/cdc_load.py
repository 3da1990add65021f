"""Steady update load for the change-stream lag benchmark, in a process of its own.

``python -m tests.bench.cdc_load URI RATE SECONDS BASE SEED`` updates random documents
of ``bench_update.orders`` (``_id`` = ``ObjectId`` of 0 … BASE-1) at RATE updates/s for
SECONDS, paced on the total: every 10 ms tick it writes what the target rate owes by
then (one unordered ``bulk_write``), so a slow acknowledgement makes the next write
larger rather than lowering the offered load. A process of its own, like a real
application's writers, so its CPU does not compete with the tailer being measured.

It prints one JSON line per acknowledged write — ``[monotonic seconds, t, i, updates]``
(``time.monotonic`` is the system-wide ``CLOCK_MONOTONIC`` on Linux, comparable with the
parent's) — then ``["done", updates, seconds]``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any

import anyio
from bson import ObjectId
from pymongo import AsyncMongoClient, UpdateOne

TICK = 0.01
MAX_WRITE = 2000


async def run(uri: str, rate: float, seconds: float, base: int, seed: int) -> None:
    rnd = random.Random(seed)
    client: AsyncMongoClient[Any] = AsyncMongoClient(uri)
    coll = client["bench_update"]["orders"]
    written = 0
    out = sys.stdout
    try:
        async with client.start_session() as session:
            began = time.monotonic()
            end = began + seconds
            next_at = began
            while time.monotonic() < end:
                owed = int(rate * (time.monotonic() - began)) - written
                if owed > 0:
                    ops = [UpdateOne({"_id": ObjectId(rnd.randrange(base).to_bytes(12, "big"))},
                                     {"$set": {"revision": written + k}})
                           for k in range(min(owed, MAX_WRITE))]
                    await coll.bulk_write(ops, ordered=False, session=session)
                    written += len(ops)
                    ts = session.operation_time
                    assert ts is not None
                    out.write(json.dumps([time.monotonic(), ts.time, ts.inc, len(ops)]) + "\n")
                next_at += TICK
                await anyio.sleep(max(0.0, next_at - time.monotonic()))
            out.write(json.dumps(["done", written, time.monotonic() - began]) + "\n")
            out.flush()
    finally:
        await client.close()


def main() -> None:
    uri, rate, seconds, base, seed = sys.argv[1:6]
    anyio.run(run, uri, float(rate), float(seconds), int(base), int(seed))


if __name__ == "__main__":
    main()
