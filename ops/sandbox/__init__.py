"""A MongoDB-compatible one-member replica set for the demo, rehearsals and tests.

The sandbox speaks MongoDB's wire protocol over TCP (OP_MSG, plus the legacy OP_QUERY
handshake) so pymongo talks to it exactly as to a real ``mongod``: it is the primary
of replica set ``rs0`` at MongoDB 7.0's wire version. Documents are stored as raw BSON
in ``_id`` order (:mod:`.store`, :mod:`.bsonkey`) so ``_id`` range scans are slices;
query and update semantics come from mongomock (:mod:`.engine`). Every write gets a
strictly increasing cluster time and an entry in a capped oplog (:mod:`.oplog`) from
which change streams are served (:mod:`.changestream`), with resume tokens, pre/post
images, expanded events and large-event splitting. Fail points, user-write blocking
and transactions (:mod:`.faults`, :mod:`.txn`) let tests inject the failures a real
deployment produces.

``start_sandbox()`` runs a server on its own asyncio event loop in a daemon thread and
returns a :class:`SandboxHandle` (``.uri``, ``.port``, ``.stop()``); ``mongo2pg
sandbox --port N`` serves one in the foreground (:mod:`.cli`). The product never
depends on it: it stands in for a real server where none is available.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import anyio

from ops.sandbox.server import BYPASS_APP_NAME, Server
from ops.sandbox.state import SET_NAME, Sandbox

__all__ = ["BYPASS_APP_NAME", "SandboxHandle", "advertised_host", "serve", "start_sandbox",
           "uri_for"]


async def serve(host: str, port: int, oplog_max_entries: int | None,
                *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve a fresh sandbox until cancelled; reports the bound port when listening.

    The replica-set member name it advertises in ``hello`` is ``host``, except that a
    wildcard bind address advertises ``$MONGO2PG_SANDBOX_ADVERTISE`` (e.g. a compose
    service name) or ``127.0.0.1``.
    """
    sb = Sandbox(advertised_host(host), port, oplog_max_entries)
    await Server(sb).serve(host, port, task_status=task_status)


def advertised_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        return os.environ.get("MONGO2PG_SANDBOX_ADVERTISE") or "127.0.0.1"
    return host


def uri_for(host: str, port: int) -> str:
    return f"mongodb://{host}:{port}/?replicaSet={SET_NAME}"


@dataclass
class SandboxHandle:
    """A sandbox running in a background thread."""

    host: str
    port: int
    _thread: threading.Thread
    _loop: asyncio.AbstractEventLoop
    _scope: anyio.CancelScope
    _stopped: bool = field(default=False)

    @property
    def uri(self) -> str:
        return uri_for(self.host, self.port)

    def stop(self) -> None:
        """Close every connection and stop the server thread (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._loop.call_soon_threadsafe(self._scope.cancel)
        except RuntimeError:  # loop already closed
            pass
        self._thread.join(10)


def start_sandbox(port: int = 0, oplog_max_entries: int | None = None,
                  host: str = "127.0.0.1") -> SandboxHandle:
    """Start a sandbox on ``host:port`` (0 = any free port) in a daemon thread."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            box["loop"] = asyncio.get_running_loop()
            box["scope"] = tg.cancel_scope
            box["port"] = await tg.start(serve, host, port, oplog_max_entries)
            ready.set()

    def run() -> None:
        try:
            anyio.run(main, backend="asyncio")
        except BaseException as exc:  # reported to the caller below
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="mongo-sandbox", daemon=True)
    thread.start()
    if not ready.wait(30) or "port" not in box:
        raise RuntimeError(f"sandbox did not start: {box.get('error')!r}")
    return SandboxHandle(advertised_host(host), int(box["port"]), thread, box["loop"],
                         box["scope"])
