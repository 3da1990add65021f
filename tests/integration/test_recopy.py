"""``mongo2pg recopy``: a collection or a list of ``_id``s copied again, through the CLI."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import psycopg
from psycopg import sql
from pymongo import MongoClient

from cdc.types import Namespace
from ops.compare import compare_all
from tests.integration.backfill_support import compare, mapper_for, pipeline
from tests.integration.daemon_support import ROOT, write_config


def recopy(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", "recopy", "--config", str(cfg), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=90, check=False)


def rows(dsn: str, db: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(sql.SQL("SELECT _id, doc::text FROM {}").format(
            sql.Identifier(db, "c"))).fetchall()
    return {str(k): str(v) for k, v in found}


def execute(dsn: str, query: sql.Composed) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query)


def test_recopy_restores_a_drifted_collection_and_chosen_ids(
    mongo_uri: str, pg_dsn: str, tmp_path: Path
) -> None:
    db = f"rc_{uuid.uuid4().hex[:8]}"
    ns = Namespace(db, "c")
    table = sql.Identifier(db, "c")
    cfg = tmp_path / "m.toml"
    write_config(cfg, mongo_uri=mongo_uri, dsn=pg_dsn, include=[f"{db}.c"])
    with MongoClient[dict[str, Any]](mongo_uri) as mongo:
        mongo[db]["c"].insert_many([{"_id": i, "v": i, "s": f"s{i}"} for i in range(700)])
        mongo[db]["c"].insert_one({"_id": "text-id", "v": -1})

        whole = recopy(cfg, "--namespace", f"{db}.c", "--workers", "2")
        assert whole.returncode == 0, whole.stderr
        assert f"{db}.c: 701 documents copied again" in whole.stdout
        assert compare(mongo_uri, pg_dsn, [ns]).mismatches == 0

        # Drift on the target: rows lost, a row changed behind the tool's back.
        execute(pg_dsn, sql.SQL("DELETE FROM {} WHERE _id IN ('5', '6', 'text-id')").format(
            table))
        execute(pg_dsn, sql.SQL("UPDATE {} SET doc = '{{\"_id\": 7}}' WHERE _id = '7'").format(
            table))
        # And a document deleted at the source whose row is still there.
        mongo[db]["c"].delete_one({"_id": 9})
        assert compare(mongo_uri, pg_dsn, [ns]).mismatches > 0

        some = recopy(cfg, "--namespace", f"{db}.c", "--id", "5", "--id", "7", "--id", "9",
                      "--id", '"text-id"')
        assert some.returncode == 0, some.stderr
        assert f"{db}.c: 3 documents copied again" in some.stdout  # 9 is gone
        after = rows(pg_dsn, db)
        assert "9" not in after and "5" in after and "text-id" in after
        assert "6" not in after  # not named: left alone
        ids_file = tmp_path / "ids.txt"
        ids_file.write_text("6\n\n")
        assert recopy(cfg, "--namespace", f"{db}.c", "--ids-file", str(ids_file)).returncode == 0
        assert compare(mongo_uri, pg_dsn, [ns]).mismatches == 0


def test_recopy_rejects_a_bad_id_or_namespace_and_changes_nothing(
    mongo_uri: str, pg_dsn: str, tmp_path: Path
) -> None:
    db = f"rb_{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "m.toml"
    write_config(cfg, mongo_uri=mongo_uri, dsn=pg_dsn, include=[f"{db}.c"])
    with MongoClient[dict[str, Any]](mongo_uri) as mongo:
        mongo[db]["c"].insert_one({"_id": 1})
    bad_id = recopy(cfg, "--namespace", f"{db}.c", "--id", "{not json")
    assert bad_id.returncode == 2
    assert "--id" in bad_id.stderr and "Traceback" not in bad_id.stderr
    bad_ns = recopy(cfg, "--namespace", f"{db}.*")
    assert bad_ns.returncode == 2 and "--namespace" in bad_ns.stderr
    missing = recopy(cfg, "--namespace", f"{db}.c", "--ids-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "--ids-file" in missing.stderr
    with psycopg.connect(pg_dsn) as conn:  # nothing was created on the target
        assert conn.execute("SELECT to_regclass(%s)", (f'"{db}".c',)).fetchone() == (None,)


def test_recopy_of_a_collection_renamed_under_follow_reads_its_new_name_into_its_table(
    mongo_uri: str, pg_dsn: str, tmp_path: Path
) -> None:
    """After ``a → b`` under follow, ``a``'s table is fed from ``b``: a re-copy named by
    either name reads ``b`` into that table (no table of ``b``'s own)."""
    db = f"rr_{uuid.uuid4().hex[:8]}"
    old, new = Namespace(db, "a"), Namespace(db, "b")
    cfg = tmp_path / "m.toml"
    write_config(cfg, mongo_uri=mongo_uri, dsn=pg_dsn, include=[f"{db}.*"],
                 ddl_default="follow")

    async def follow_a_rename() -> None:
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.*"], ddl_default="follow") as p:
            await p.client[db]["a"].insert_many([{"_id": i, "v": i} for i in range(40)])
            await p.client[db]["a"].rename("b")
            await p.caught_up()

    anyio.run(follow_a_rename)
    with MongoClient[dict[str, Any]](mongo_uri) as mongo:
        execute(pg_dsn, sql.SQL("DELETE FROM {} WHERE _id IN ('1', '2')").format(
            sql.Identifier(db, "a")))
        by_old = recopy(cfg, "--namespace", f"{db}.a")
        assert by_old.returncode == 0, by_old.stderr
        result = compare_all(mongo, pg_dsn, [new], lambda _: mapper_for(old))
        assert result.documents == 40 and result.mismatches == 0
        execute(pg_dsn, sql.SQL("DELETE FROM {} WHERE _id = '3'").format(
            sql.Identifier(db, "a")))
        by_new = recopy(cfg, "--namespace", f"{db}.b", "--id", "3")
        assert by_new.returncode == 0, by_new.stderr
        result = compare_all(mongo, pg_dsn, [new], lambda _: mapper_for(old))
        assert result.documents == 40 and result.mismatches == 0
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (f'"{db}"."b"',)).fetchone() == (None,)
