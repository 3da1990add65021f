"""Killing ``mongo2pg run`` during the backfill: it resumes, re-copies little, ends equal."""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pymongo import MongoClient

from cdc.types import Namespace
from tests.integration.backfill_support import CONTROL, compare
from tests.integration.daemon_support import (
    copied_docs,
    phase,
    start_daemon,
    stop,
    wait_for,
    write_config,
)

WORKERS = 3


def chunk_stats(dsn: str) -> list[tuple[str, int, int, str | None]]:
    with psycopg.connect(dsn) as conn:
        return [(r[0], int(r[1]), int(r[2]), r[3]) for r in conn.execute(sql.SQL(
            "SELECT status, attempts, docs, lease_owner FROM {}.chunks").format(
                sql.Identifier(CONTROL))).fetchall()]


def test_sigkill_during_backfill_resumes_and_recopies_at_most_workers_chunks(
    mongo_uri: str, pg_dsn: str, tmp_path: Path
) -> None:
    db = f"dk_{uuid.uuid4().hex[:8]}"

    with MongoClient[dict[str, Any]](mongo_uri) as mongo:
        mongo[db]["big"].insert_many([{"_id": i, "v": "x" * 50} for i in range(9000)])
        mongo[db]["small"].insert_many([{"n": i} for i in range(1500)])
        cfg = tmp_path / "m.toml"
        write_config(cfg, mongo_uri=mongo_uri, dsn=pg_dsn, include=[f"{db}.*"],
                     workers=WORKERS, chunk_documents=400, throttle=3000)
        log = tmp_path / "daemon.log"
        crashes = 0
        for threshold in (1500, 4000, 7000):
            proc = start_daemon(cfg, log)
            try:
                wait_for(lambda t=threshold: copied_docs(pg_dsn) >= t, 40, f"{threshold} docs")
                mongo[db]["big"].update_many({"_id": {"$lt": threshold}},
                                             {"$set": {"v": f"after-{threshold}"}})
                mongo[db]["big"].delete_many({"_id": {"$in": list(range(threshold,
                                                                        threshold + 20))}})
            finally:
                stop(proc, signal.SIGKILL)
            crashes += 1
            # Each killed process leaves at most one chunk per worker behind (a chunk of an
            # earlier crash may still wait for its lease to expire).
            held = Counter(c[3] for c in chunk_stats(pg_dsn) if c[0] == "running")
            assert all(n <= WORKERS for n in held.values())
        proc = start_daemon(cfg, log)
        try:
            wait_for(lambda: phase(pg_dsn) == "in_sync", 50, "in_sync")
        finally:
            assert stop(proc) == 0, log.read_text()[-3000:]
    stats = chunk_stats(pg_dsn)
    assert all(c[0] == "done" for c in stats)
    recopied = [c for c in stats if c[1] > 1]
    assert 0 < len(recopied) <= WORKERS * crashes  # the kills did interrupt chunk copies
    largest_chunk = max(c[2] for c in stats)
    assert sum(c[2] for c in recopied) <= WORKERS * crashes * largest_chunk
    result = compare(mongo_uri, pg_dsn, [Namespace(db, "big"), Namespace(db, "small")])
    assert result.documents == 9000 - 60 + 1500
    assert result.mismatches == 0


def test_sigterm_during_backfill_hands_chunks_back_and_exits_zero(
    mongo_uri: str, pg_dsn: str, tmp_path: Path
) -> None:
    db = f"dt_{uuid.uuid4().hex[:8]}"

    with MongoClient[dict[str, Any]](mongo_uri) as mongo:
        mongo[db]["c"].insert_many([{"_id": i} for i in range(6000)])
    cfg = tmp_path / "m.toml"
    write_config(cfg, mongo_uri=mongo_uri, dsn=pg_dsn, include=[f"{db}.c"],
                 workers=WORKERS, chunk_documents=500, throttle=2000, lease_seconds=600)
    log = tmp_path / "daemon.log"
    proc = start_daemon(cfg, log)
    try:
        wait_for(lambda: copied_docs(pg_dsn) >= 1000, 30, "1000 docs")
    finally:
        assert stop(proc, signal.SIGTERM, timeout=15) == 0, log.read_text()[-3000:]
    stats = chunk_stats(pg_dsn)
    assert not [c for c in stats if c[0] == "running"]
    assert [c for c in stats if c[0] == "pending"]
    # The long lease does not hold the restart up: handed-back chunks are claimable.
    proc = start_daemon(cfg, log)
    try:
        wait_for(lambda: phase(pg_dsn) == "in_sync", 30, "in_sync")
    finally:
        assert stop(proc) == 0
    assert compare(mongo_uri, pg_dsn, [Namespace(db, "c")]).mismatches == 0
