"""SIGKILL of a process running the tailer at random points, then restart: PostgreSQL
ends equal to MongoDB, with no lost and no duplicated effect."""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
from pymongo import AsyncMongoClient

from tests.support.tailing import checkpoint_time, differences, pg_connect
from tests.support.workload import run_workload

ROOT = Path(__file__).resolve().parents[2]
KILLS = 10


async def wait_for_line(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    line = await anyio.to_thread.run_sync(proc.stdout.readline)
    while line and not line.startswith(prefix):
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
    return line


def spawn(mongo_uri: str, pg_dsn: str, include: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.tailer_proc", mongo_uri, pg_dsn, *include],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_sigkill_at_random_points_then_restart_loses_and_duplicates_nothing(
        mongo_uri: str, pg_dsn: str) -> None:
    db = f"t{uuid.uuid4().hex[:10]}"
    namespaces = [f"{db}.a", f"{db}.b"]
    rng = random.Random(2024)

    async def main() -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
        counter = client[db]["a"]
        await counter.insert_one({"_id": "counter", "n": 0})
        killed_at: list[int | None] = []
        for round_ in range(KILLS):
            proc = spawn(mongo_uri, pg_dsn, [f"{db}.*"])
            try:
                assert (await wait_for_line(proc, "started")).startswith("started")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(functools.partial(run_workload, client, namespaces, ops=80,
                                                    seed=round_))
                    for _ in range(20):  # increments whose replays would double-count
                        await counter.update_one({"_id": "counter"}, {"$inc": {"n": 1}})
                    await anyio.sleep(rng.uniform(0.05, 0.6))
                    proc.send_signal(signal.SIGKILL)
            finally:
                stop(proc)
            killed_at.append(await checkpoint_time(pg_dsn))
        # Restart once more and let it catch up.
        proc = spawn(mongo_uri, pg_dsn, [f"{db}.*"])
        try:
            await wait_for_line(proc, "started")
            target = (await client.admin.command("ping"))["operationTime"]
            packed = target.time << 32 | target.inc
            with anyio.fail_after(30):
                while True:
                    if (await checkpoint_time(pg_dsn) or 0) >= packed:
                        break
                    await anyio.sleep(0.05)
        finally:
            stop(proc)
        assert len({t for t in killed_at if t is not None}) >= 3  # killed at varied points
        assert await differences(client, pg_dsn, namespaces) == []
        conn = await pg_connect(pg_dsn)
        try:
            n = await conn.fetchval(
                f"""SELECT (doc->>'n')::int FROM "{db}"."a" WHERE _id = 'counter'""")  # noqa: S608
        finally:
            await conn.close()
        assert n == (await counter.find_one({"_id": "counter"}) or {}).get("n")
        await client.close()

    anyio.run(main)
