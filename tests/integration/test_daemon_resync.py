"""History loss: the daemon goes to resync_required, copies everything again, catches up."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from cdc.types import Namespace
from tests.integration.backfill_support import compare
from tests.integration.daemon_support import phase, start_daemon, stop, wait_for, write_config


@pytest.mark.sandbox_only
def test_history_loss_triggers_full_recopy_and_removes_documents_deleted_meanwhile(
    small_oplog_uri: str, pg_dsn: str, tmp_path: Path
) -> None:
    uri = small_oplog_uri
    db = f"dr_{uuid.uuid4().hex[:8]}"
    with MongoClient[dict[str, Any]](uri) as mongo:
        mongo[db]["c"].insert_many([{"_id": i, "v": 0} for i in range(2000)])
        cfg = tmp_path / "m.toml"
        write_config(cfg, mongo_uri=uri, dsn=pg_dsn, include=[f"{db}.*"])
        log = tmp_path / "daemon.log"
        proc = start_daemon(cfg, log)
        try:
            wait_for(lambda: phase(pg_dsn) == "in_sync", 30, "in_sync")
            first = compare(uri, pg_dsn, [Namespace(db, "c")])
            assert (first.documents, first.mismatches) == (2000, 0), first
        finally:
            assert stop(proc) == 0
        # While the daemon is down, more changes than the oplog keeps.
        mongo[db]["c"].insert_many([{"_id": 10_000 + i, "v": 1} for i in range(500)])
        mongo[db]["c"].update_many({"_id": {"$lt": 400}}, {"$set": {"v": 2}})
        # Deletes in the lost window: no event will ever say so; the sweep must find them.
        mongo[db]["c"].delete_many({"_id": {"$gte": 1900, "$lt": 2000}})
        proc = start_daemon(cfg, log)
        try:
            wait_for(lambda: "history lost" in log.read_text(), 30, "history loss seen")
            wait_for(lambda: phase(pg_dsn) == "in_sync", 40, "in_sync after resync")
            mongo[db]["c"].update_one({"_id": 1}, {"$set": {"v": 3}})
            wait_for(lambda: compare(uri, pg_dsn, [Namespace(db, "c")]).mismatches == 0,
                     20, "equality")
            assert "rows older than the re-copy checked again" in log.read_text()
        finally:
            assert stop(proc) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "copying everything again" in text
    assert text.count("backfill done") == 2  # the first copy, then the full re-copy
    result = compare(uri, pg_dsn, [Namespace(db, "c")])
    assert result.documents == 2400 and result.mismatches == 0
