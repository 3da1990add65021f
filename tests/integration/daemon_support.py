"""Running ``mongo2pg run`` as a real process in tests, and watching it through PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ops.pgtemp import free_port
from tests.integration.backfill_support import CONTROL

ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, *, mongo_uri: str, dsn: str, include: list[str],
                 workers: int = 3, chunk_documents: int = 500, batch_size: int = 100,
                 lease_seconds: float = 2.0, throttle: float = 0.0,
                 port: int | None = None, ddl_default: str = "mark") -> int:
    """A TOML config for a test daemon; returns its metrics port."""
    port = port if port is not None else free_port()
    includes = ", ".join(f'"{i}"' for i in include)
    path.write_text(f"""
include = [{includes}]
[source]
uri = "{mongo_uri}"
[target]
dsn = "{dsn}"
control_schema = "{CONTROL}"
[metrics]
port = {port}
[stream]
batch_max_ms = 50
max_await_ms = 100
ddl_default = "{ddl_default}"
[backfill]
workers = {workers}
chunk_documents = {chunk_documents}
batch_size = {batch_size}
samples_per_chunk = 5
lease_seconds = {lease_seconds}
throttle_docs_per_second = {throttle}
progress_interval_seconds = 0.2
[phases]
in_sync_lag_seconds = 2
check_interval_seconds = 0.2
[daemon]
progress = "off"
""")
    return port


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "ops", "run", "--config", str(config)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def scalar(dsn: str, query: str) -> Any:
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            row = conn.execute(sql.SQL(query).format(ctl=sql.Identifier(CONTROL))).fetchone()
            return None if row is None else row[0]
    except psycopg.errors.UndefinedTable:
        return None


def phase(dsn: str) -> str | None:
    value = scalar(dsn, "SELECT phase FROM {ctl}.phase")
    return None if value is None else str(value)


def copied_docs(dsn: str) -> int:
    return int(scalar(dsn, "SELECT COALESCE(sum(docs), 0) FROM {ctl}.chunks "
                      "WHERE status = 'done'") or 0)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout)
