"""Two ``mongo2pg run`` processes sharing one control schema split the backfill."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pymongo import MongoClient

from cdc.types import Namespace
from tests.integration.backfill_support import CONTROL, compare
from tests.integration.daemon_support import phase, start_daemon, stop, wait_for, write_config


def test_two_daemons_copy_every_chunk_once_and_end_equal(
    mongo_uri: str, pg_dsn: str, tmp_path: Path
) -> None:
    db = f"ds_{uuid.uuid4().hex[:8]}"

    with MongoClient[dict[str, Any]](mongo_uri) as mongo:
        mongo[db]["c"].insert_many([{"_id": i, "v": i} for i in range(8000)])
        mongo[db]["d"].insert_many([{"w": i} for i in range(2000)])
    procs = []
    for name in ("one", "two"):
        cfg = tmp_path / f"{name}.toml"
        write_config(cfg, mongo_uri=mongo_uri, dsn=pg_dsn, include=[f"{db}.*"],
                     workers=2, chunk_documents=400, throttle=2500, lease_seconds=30)
        procs.append((start_daemon(cfg, tmp_path / f"{name}.log"), tmp_path / f"{name}.log"))
    try:
        wait_for(lambda: phase(pg_dsn) == "in_sync", 50, "in_sync")
    finally:
        codes = [(stop(p), log) for p, log in procs]
    for rc, log in codes:
        assert rc == 0, log.read_text()[-3000:]
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(sql.SQL(
            "SELECT status, attempts, docs, lease_owner FROM {}.chunks").format(
                sql.Identifier(CONTROL))).fetchall()
    assert rows and all(r[0] == "done" and r[1] == 1 for r in rows)
    assert sum(r[2] for r in rows) == 10_000
    assert len({r[3] for r in rows}) == 2  # both processes copied chunks
    result = compare(mongo_uri, pg_dsn, [Namespace(db, "c"), Namespace(db, "d")])
    assert result.documents == 10_000 and result.mismatches == 0
