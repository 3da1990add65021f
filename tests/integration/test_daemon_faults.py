"""The daemon's lifecycle under PostgreSQL faults: a connection lost while the phase is
written (terminated, or cut by the network), or a server refusing new connections then,
is retried, not the end of the process."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import pytest
from psycopg import sql
from pymongo import MongoClient

from cdc.sink.migrations import migrate_sync
from cdc.types import Namespace
from tests.integration.backfill_support import CONTROL, compare
from tests.integration.daemon_support import (
    phase,
    scalar,
    start_daemon,
    stop,
    wait_for,
    write_config,
)
from tests.support.tcpproxy import TcpProxy


def waiting_on(su: psycopg.Connection[Any], pattern: str) -> list[int]:
    """Backends of this database waiting for a lock in a statement like ``pattern``."""
    rows = su.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' "
        "AND query ILIKE %s", (pattern,)).fetchall()
    return [int(r[0]) for r in rows]


def waiting_on_phase(su: psycopg.Connection[Any]) -> list[int]:
    """Backends of this database waiting for a lock while writing the phase row."""
    return waiting_on(su, "%.%phase%")


def daemon_role(pg_dsn: str) -> tuple[str, str]:
    """A login role owning the test database (the daemon connects as it); its DSN."""
    role = f"d{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as su:
        su.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        su.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
            sql.Identifier(su.info.dbname), sql.Identifier(role)))
    return role, psycopg.conninfo.make_conninfo(pg_dsn, user=role, password="")


def connection_limit(pg_dsn: str, role: str, limit: int) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as su:
        su.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
            sql.Identifier(role), sql.Literal(limit)))


@pytest.mark.parametrize("refused", [False, True], ids=["terminated", "then-refused"])
def test_a_connection_lost_while_the_phase_is_written_is_retried_not_fatal(
    mongo_uri: str, pg_dsn: str, tmp_path: Path, refused: bool
) -> None:
    """The first phase write (init → backfilling) waits behind a lock and its backend is
    terminated; with ``refused``, new connections are refused for a while after that
    (too many for the daemon's role), so the retried write cannot connect at first."""
    db = f"dp_{uuid.uuid4().hex[:8]}"
    with MongoClient[dict[str, Any]](mongo_uri) as mongo:
        mongo[db]["c"].insert_many([{"_id": i, "v": i} for i in range(200)])
    role, dsn = daemon_role(pg_dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate_sync(conn, CONTROL)
        conn.execute(sql.SQL("INSERT INTO {}.phase (phase) VALUES ('init')").format(
            sql.Identifier(CONTROL)))
    cfg = tmp_path / "m.toml"
    write_config(cfg, mongo_uri=mongo_uri, dsn=dsn, include=[f"{db}.c"])
    log = tmp_path / "daemon.log"
    # Phase writes wait behind this lock (reads do not).
    with psycopg.connect(pg_dsn, autocommit=True) as su, psycopg.connect(pg_dsn) as locker:
        locker.execute(sql.SQL("LOCK TABLE {}.phase IN EXCLUSIVE MODE").format(
            sql.Identifier(CONTROL)))
        proc = start_daemon(cfg, log)
        try:
            wait_for(lambda: bool(waiting_on_phase(su)) or proc.poll() is not None, 30,
                     "a phase write waiting")
            if refused:
                connection_limit(pg_dsn, role, 0)
            su.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid",
                       (waiting_on_phase(su),))
            locker.rollback()
            if refused:
                time.sleep(1.5)  # the retried write is refused meanwhile
                assert proc.poll() is None, log.read_text()[-3000:]
                connection_limit(pg_dsn, role, -1)
            wait_for(lambda: phase(pg_dsn) == "in_sync" or proc.poll() is not None, 30,
                     "in_sync")
            assert proc.poll() is None, log.read_text()[-3000:]
        finally:
            rc = stop(proc)
    assert rc == 0, log.read_text()[-3000:]
    result = compare(mongo_uri, pg_dsn, [Namespace(db, "c")])
    assert (result.documents, result.mismatches) == (200, 0)


@pytest.mark.sandbox_only
def test_a_connection_lost_while_resync_required_is_written_is_retried_not_fatal(
    small_oplog_uri: str, pg_dsn: str, tmp_path: Path
) -> None:
    """History is lost while the daemon is down; on restart the stream task writes
    ``resync_required`` behind a lock, and that write's backend is terminated. The write
    is retried (before the fresh stream starts), and the re-copy runs."""
    uri = small_oplog_uri
    db = f"dr_{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "m.toml"
    write_config(cfg, mongo_uri=uri, dsn=pg_dsn, include=[f"{db}.c"])
    # A lag threshold no lag reaches: the stream task writes the only phase change.
    cfg.write_text(cfg.read_text().replace("in_sync_lag_seconds = 2",
                                           "in_sync_lag_seconds = 10000"))
    log = tmp_path / "daemon.log"
    with MongoClient[dict[str, Any]](uri) as mongo:
        mongo[db]["c"].insert_many([{"_id": i, "v": 0} for i in range(100)])
        proc = start_daemon(cfg, log)
        try:
            wait_for(lambda: phase(pg_dsn) == "in_sync", 30, "in_sync")
        finally:
            assert stop(proc) == 0, log.read_text()[-3000:]
        mongo[db]["c"].insert_many([{"_id": 1000 + i, "v": 1} for i in range(400)])
    with psycopg.connect(pg_dsn, autocommit=True) as su, psycopg.connect(pg_dsn) as locker:
        locker.execute(sql.SQL("LOCK TABLE {}.phase IN EXCLUSIVE MODE").format(
            sql.Identifier(CONTROL)))
        proc = start_daemon(cfg, log)
        try:
            wait_for(lambda: bool(waiting_on_phase(su)) or proc.poll() is not None, 30,
                     "the resync_required write waiting")
            assert "copying everything again" in log.read_text()
            su.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid",
                       (waiting_on_phase(su),))
            locker.rollback()
            wait_for(lambda: log.read_text().count("backfill done") == 2
                     or proc.poll() is not None, 30, "the re-copy")
            assert proc.poll() is None, log.read_text()[-3000:]
            wait_for(lambda: phase(pg_dsn) == "in_sync", 30, "in_sync after the re-copy")
        finally:
            rc = stop(proc)
    assert rc == 0, log.read_text()[-3000:]
    result = compare(uri, pg_dsn, [Namespace(db, "c")])
    assert (result.documents, result.mismatches) == (500, 0)


@pytest.mark.parametrize("step", ["phase", "plan"])
def test_a_network_blip_during_a_lifecycle_write_is_retried_not_fatal(
    mongo_uri: str, pg_dsn: str, tmp_path: Path, step: str
) -> None:
    """The daemon reaches PostgreSQL through a proxy; while a write of its lifecycle
    waits behind a lock (the first phase move, or the backfill's plan), every connection
    is cut (no error message from the server: psycopg reports no SQLSTATE). The daemon
    retries, and migrates."""
    db = f"dn_{uuid.uuid4().hex[:8]}"
    with MongoClient[dict[str, Any]](mongo_uri) as mongo:
        mongo[db]["c"].insert_many([{"_id": i, "v": i} for i in range(200)])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate_sync(conn, CONTROL)
        conn.execute(sql.SQL("INSERT INTO {}.phase (phase) VALUES ('init')").format(
            sql.Identifier(CONTROL)))
    info = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    log = tmp_path / "daemon.log"
    with TcpProxy(str(info.get("host") or "127.0.0.1"), int(str(info.get("port") or 5432))
                  ) as proxy:
        cfg = tmp_path / "m.toml"
        write_config(cfg, mongo_uri=mongo_uri, include=[f"{db}.c"],
                     dsn=psycopg.conninfo.make_conninfo(pg_dsn, host="127.0.0.1",
                                                        port=proxy.port))
        with psycopg.connect(pg_dsn, autocommit=True) as su, \
                psycopg.connect(pg_dsn) as locker:
            if step == "phase":  # phase writes wait behind this lock (reads do not)
                locker.execute(sql.SQL("LOCK TABLE {}.phase IN EXCLUSIVE MODE").format(
                    sql.Identifier(CONTROL)))
                pattern = "%.%phase%"
            else:  # the lock a plan of the namespace takes
                locker.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                               (f"mongo2pg.plan.{CONTROL}.{db}.c",))
                pattern = "%pg_advisory_xact_lock%"
            proc = start_daemon(cfg, log)
            try:
                wait_for(lambda: bool(waiting_on(su, pattern)) or proc.poll() is not None,
                         30, f"a {step} write waiting")
                proxy.cut()
                locker.rollback()
                wait_for(lambda: phase(pg_dsn) == "in_sync" or proc.poll() is not None, 30,
                         "in_sync")
                assert proc.poll() is None, log.read_text()[-3000:]
            finally:
                rc = stop(proc)
    assert rc == 0, log.read_text()[-3000:]
    result = compare(mongo_uri, pg_dsn, [Namespace(db, "c")])
    assert (result.documents, result.mismatches) == (200, 0)


def test_sigterm_while_the_backfill_waits_for_its_throttle_exits_zero(
    mongo_uri: str, pg_dsn: str, tmp_path: Path
) -> None:
    """At 50 documents per second a batch of 250 waits 5 s for the throttle, longer than
    the drain timeout (2 s here): SIGTERM still drains in time and exits 0, and the
    chunks go back to the pool."""
    db = f"dd_{uuid.uuid4().hex[:8]}"
    with MongoClient[dict[str, Any]](mongo_uri) as mongo:
        mongo[db]["c"].insert_many([{"_id": i, "v": i} for i in range(1000)])
    cfg = tmp_path / "m.toml"
    write_config(cfg, mongo_uri=mongo_uri, dsn=pg_dsn, include=[f"{db}.c"], workers=1,
                 chunk_documents=1000, batch_size=250, throttle=50, lease_seconds=600)
    cfg.write_text(cfg.read_text().replace("[daemon]\n", "[daemon]\ndrain_timeout_seconds = 2\n"))
    log = tmp_path / "daemon.log"
    proc = start_daemon(cfg, log)
    try:
        wait_for(lambda: (scalar(pg_dsn, "SELECT count(*) FROM {ctl}.chunks "
                                 "WHERE docs > 0") or 0) > 0, 30, "a batch written")
        time.sleep(0.5)  # the next batch waits for the throttle now
    finally:
        rc = stop(proc, timeout=15)
    assert rc == 0, log.read_text()[-3000:]
    assert scalar(pg_dsn, "SELECT count(*) FROM {ctl}.chunks WHERE status = 'running'") == 0
