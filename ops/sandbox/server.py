"""The TCP server: one task per connection, one command at a time per connection.

Each connection reads a 16-byte header, then the rest of the message, decodes it
(:mod:`ops.sandbox.wire`), runs the command and writes the reply, in order; OP_MSG
requests with ``moreToCome`` get no reply. Around every command the server binds it to
its session's transaction, applies the ``failCommand`` fail point, refuses user writes
while ``setUserWriteBlockMode`` holds, answers a retried retryable write (same ``lsid``
and ``txnNumber``) with the reply of its first execution instead of applying it twice,
and stamps ``$clusterTime`` and
``operationTime`` on the reply. Command errors become ``ok: 0`` replies; a message that
does not parse, or a fail point's ``closeConnection``, closes only that connection, and
an unexpected exception inside a command becomes an ``InternalError`` reply, never a
dead server. Connections are served in an anyio task group, so cancelling the server's
scope (``stop()``, SIGTERM) closes every connection and wakes every waiting cursor.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from typing import Any

import anyio
import bson
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream
from bson.binary import Binary
from bson.int64 import Int64

# Handler modules register their commands on import.
from ops.sandbox import (  # noqa: F401
    changestream,
    cmd_admin,
    cmd_ddl,
    cmd_read,
    cmd_write,
    txn,
    wire,
)
from ops.sandbox.errors import CommandError
from ops.sandbox.faults import configure_fail_point, error_for  # noqa: F401
from ops.sandbox.registry import COMMANDS, Connection, Ctx
from ops.sandbox.state import Sandbox, check_writable

log = logging.getLogger(__name__)

#: Connections whose handshake names this application may write while
#: ``setUserWriteBlockMode`` blocks user writes — the sandbox's stand-in for a user
#: holding the ``bypassWriteBlockingMode`` privilege (the sandbox has no users).
BYPASS_APP_NAME = "mongo2pg-bypass-write-block"
_SIGNATURE = {"hash": Binary(b"\x00" * 20), "keyId": Int64(0)}


class Server:
    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self._conn_ids = itertools.count(1)
        self._request_ids = itertools.count(1)

    async def serve(self, host: str, port: int,
                    *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        bound = int(listener.extra(SocketAttribute.local_port))
        self.sb.port = bound
        task_status.started(bound)
        async with listener:
            await listener.serve(self.handle)

    async def handle(self, stream: SocketStream) -> None:
        conn = Connection(next(self._conn_ids))
        try:
            conn.peer = "{}:{}".format(*stream.extra(SocketAttribute.remote_address)[:2])
        except Exception:
            conn.peer = "unknown"
        reader = BufferedByteReceiveStream(stream)
        try:
            while True:
                header = await reader.receive_exactly(16)
                length, request_id, _, op_code = wire.HEADER.unpack(header)
                if length < 16 or length > wire.MAX_MESSAGE_SIZE:
                    raise wire.ProtocolError(f"bad message length {length}")
                payload = await reader.receive_exactly(length - 16)
                request = wire.parse(request_id, op_code, payload)
                out = await self.execute(request, conn)
                if out is None:
                    break
                if not request.more_to_come:
                    await stream.send(out)
        except wire.ProtocolError as exc:
            log.info("closing connection %s: %s", conn.id, exc)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError,
                anyio.ClosedResourceError, OSError):
            pass
        except Exception:
            log.exception("connection %s failed", conn.id)
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def execute(self, request: wire.Request, conn: Connection) -> bytes | None:
        """Run one command; the framed reply, or None to close the connection."""
        sb = self.sb
        body = request.body
        name = next(iter(body), "")
        db = str(body.get("$db", "admin"))
        result: dict[str, Any]
        try:
            spec = COMMANDS.get(name)
            if spec is None:
                raise CommandError(59, f"no such command: '{name}'")
            from ops.sandbox.txn import bind

            ctx = Ctx(sb, name, body, db, conn, request.sequences)
            data = None if name == "configureFailPoint" else sb.failpoints.take(
                name, conn.app_name)
            if data is not None:
                if data.get("blockConnection"):
                    await anyio.sleep(int(data.get("blockTimeMS", 0)) / 1000)
                if data.get("closeConnection"):
                    return None
                if data.get("errorCode") is not None:
                    raise error_for(data, ctx, name == "getMore" and self._is_stream(body))
            ctx.txn = bind(sb, body, name)
            if spec.write:
                target_db = str(body.get(name, "")).partition(".")[0] \
                    if name == "renameCollection" else db
                check_writable(sb, target_db, conn.app_name == BYPASS_APP_NAME)
            retry_key = self._retry_key(body, ctx, spec.write)
            cached = sb.retries.get(retry_key) if retry_key else None
            if cached is not None and retry_key and cached[0] == body["txnNumber"]:
                # a retried retryable write: answer as before, do not apply it twice
                result = dict(cached[1])
            else:
                out = spec.handler(ctx)
                result = await out if inspect.isawaitable(out) else out
                if retry_key:
                    sb.retries[retry_key] = (int(body["txnNumber"]), dict(result))
            if data is not None and "writeConcernError" in data:
                result["writeConcernError"] = data["writeConcernError"]
        except CommandError as exc:
            result = exc.reply()
        except Exception as exc:
            log.exception("command %s failed", name)
            result = CommandError(1, f"internal sandbox error in {name}: {exc!r}").reply()
        ts = sb.operation_time()
        result["$clusterTime"] = {"clusterTime": ts, "signature": _SIGNATURE}
        result["operationTime"] = ts
        try:
            encoded = bson.encode(result)
        except Exception as exc:
            encoded = bson.encode({**CommandError(10334, f"reply too large or invalid: {exc}")
                                   .reply(), "operationTime": ts})
        return wire.reply(request, encoded, next(self._request_ids))

    @staticmethod
    def _retry_key(body: dict[str, Any], ctx: Ctx, write: bool) -> bytes | None:
        if not write or ctx.txn is not None or "txnNumber" not in body:
            return None
        lsid = body.get("lsid")
        if not isinstance(lsid, dict) or "id" not in lsid:
            return None
        return bytes(lsid["id"])

    def _is_stream(self, body: dict[str, Any]) -> bool:
        from ops.sandbox.changestream import StreamCursor

        return isinstance(self.sb.cursors.get(int(body.get("getMore", 0))), StreamCursor)
