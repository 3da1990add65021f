"""The sandbox as a separate process: ``python -m ops sandbox``."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import pytest
from pymongo import MongoClient


@pytest.mark.sandbox_only
def test_sandbox_process_prints_uri_serves_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "ops", "sandbox", "--port", "0",
                             "--oplog-max-entries", "10"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        uri = proc.stdout.readline().strip()
        assert uri.startswith("mongodb://127.0.0.1:") and uri.endswith("/?replicaSet=rs0")
        client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
        try:
            client.t.c.insert_one({"_id": 1})
            assert client.t.c.find_one() == {"_id": 1}
        finally:
            client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
