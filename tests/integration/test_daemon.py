"""``mongo2pg run`` as a process: endpoints, SIGTERM, and a live migration end to end."""

from __future__ import annotations

import signal
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from cdc.types import Namespace
from ops.compare import compare_all
from tests.integration.backfill_support import compare, mapper_for
from tests.integration.daemon_support import (
    copied_docs,
    phase,
    scalar,
    start_daemon,
    stop,
    wait_for,
    write_config,
)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_daemon_migrates_live_writes_and_exits_zero_on_sigterm(
    mongo_uri: str, pg_dsn: str, tmp_path: Path
) -> None:
    db = f"dm_{uuid.uuid4().hex[:8]}"

    with MongoClient[dict[str, Any]](mongo_uri) as mongo:
        mongo[db]["a"].insert_many([{"_id": i, "v": i, "tags": ["x", i]} for i in range(3000)])
        mongo[db]["b"].insert_many([{"s": str(i), "sub": {"k": i}} for i in range(1000)])
        cfg = tmp_path / "m.toml"
        port = write_config(cfg, mongo_uri=mongo_uri, dsn=pg_dsn, include=[f"{db}.*"],
                            throttle=1000)
        proc = start_daemon(cfg, tmp_path / "daemon.log")
        try:
            wait_for(lambda: phase(pg_dsn) == "backfilling", 30, "backfilling")
            # Writes while the backfill runs: inserts, updates, deletes.
            mongo[db]["a"].update_many({"v": {"$lt": 500}}, {"$set": {"v": -1}})
            mongo[db]["a"].delete_many({"_id": {"$gte": 2900}})
            mongo[db]["c"].insert_many([{"_id": f"n{i}"} for i in range(50)])
            status, body = get(port, "/livez")
            assert status == 200
            status, body = get(port, "/metrics")
            assert status == 200
            assert 'mongo2pg_phase{phase="backfilling"} 1.0' in body
            assert "mongo2pg_backfill_progress_ratio" in body
            wait_for(lambda: phase(pg_dsn) == "in_sync", 40, "in_sync")
            assert get(port, "/readyz")[0] == 200
            status, body = get(port, "/metrics")
            assert 'mongo2pg_phase{phase="in_sync"} 1.0' in body
            assert copied_docs(pg_dsn) >= 3000
        finally:
            rc = stop(proc, signal.SIGTERM)
        assert rc == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    result = compare(mongo_uri, pg_dsn, [Namespace(db, c) for c in ("a", "b", "c")])
    assert result.documents == 3000 - 100 + 1000 + 50
    assert result.mismatches == 0


def test_sighup_lifts_the_backfill_throttle_at_run_time(
    mongo_uri: str, pg_dsn: str, tmp_path: Path
) -> None:
    db = f"dh_{uuid.uuid4().hex[:8]}"
    with MongoClient[dict[str, Any]](mongo_uri) as mongo:
        mongo[db]["c"].insert_many([{"_id": i} for i in range(20_000)])
    cfg = tmp_path / "m.toml"
    port = write_config(cfg, mongo_uri=mongo_uri, dsn=pg_dsn, include=[f"{db}.c"],
                        chunk_documents=2000, batch_size=200, throttle=400)
    proc = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        wait_for(lambda: copied_docs(pg_dsn) > 0, 30, "first chunk")
        # At 400 docs/s the copy would take 50 s; lift the throttle in the file, SIGHUP.
        write_config(cfg, mongo_uri=mongo_uri, dsn=pg_dsn, include=[f"{db}.c"],
                     chunk_documents=2000, batch_size=200, throttle=0, port=port)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: phase(pg_dsn) == "in_sync", 25, "in_sync after SIGHUP")
    finally:
        assert stop(proc) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    assert "backfill settings reloaded" in (tmp_path / "daemon.log").read_text()
    assert compare(mongo_uri, pg_dsn, [Namespace(db, "c")]).mismatches == 0


def test_a_restart_after_a_followed_rename_keeps_feeding_the_first_table(
    mongo_uri: str, pg_dsn: str, tmp_path: Path
) -> None:
    """``db.*`` with ``follow``: after ``a`` is renamed to ``b`` and the daemon restarts,
    ``b`` is the table ``a``'s source — not a new collection with a table of its own."""
    db = f"dm_{uuid.uuid4().hex[:8]}"
    old, new = Namespace(db, "a"), Namespace(db, "b")
    with MongoClient[dict[str, Any]](mongo_uri) as mongo:
        mongo[db]["a"].insert_many([{"_id": i, "v": i} for i in range(300)])
        cfg = tmp_path / "m.toml"
        write_config(cfg, mongo_uri=mongo_uri, dsn=pg_dsn, include=[f"{db}.*"],
                     ddl_default="follow")
        log = tmp_path / "daemon.log"
        proc = start_daemon(cfg, log)
        try:
            wait_for(lambda: phase(pg_dsn) == "in_sync", 40, "in_sync")
            mongo[db]["a"].rename("b")
            mongo[db]["b"].insert_many([{"_id": 300 + i, "v": 0} for i in range(20)])
            wait_for(lambda: rows(pg_dsn, db, "a") == 320, 20, "the rename followed")
        finally:
            assert stop(proc, signal.SIGTERM) == 0, log.read_text()[-3000:]
        mongo[db]["b"].update_many({"_id": {"$lt": 50}}, {"$set": {"v": -1}})
        proc = start_daemon(cfg, log)
        try:
            wait_for(lambda: phase(pg_dsn) == "in_sync", 40, "in_sync after the restart")
            mongo[db]["b"].delete_many({"_id": {"$gte": 310}})
            wait_for(lambda: rows(pg_dsn, db, "a") == 310, 20, "the delete applied")
        finally:
            assert stop(proc, signal.SIGTERM) == 0, log.read_text()[-3000:]
        assert scalar(pg_dsn, f"SELECT to_regclass('\"{db}\".\"b\"')::text") is None
        result = compare_all(mongo, pg_dsn, [new], lambda _: mapper_for(old))
    assert result.documents == 310 and result.mismatches == 0


def rows(dsn: str, schema: str, table: str) -> int:
    return int(scalar(dsn, f'SELECT count(*) FROM "{schema}"."{table}"') or 0)  # noqa: S608
