"""The HTTP endpoint of the metrics port: ``/metrics``, ``/livez``, ``/readyz``.

A deliberately tiny HTTP/1.0-style server on an anyio TCP listener (one request per
connection, GET only): ``/metrics`` is prometheus_client's default registry in the
text exposition format; ``/livez`` answers 200 while the process runs its event loop;
``/readyz`` answers 200 only when the readiness callback says so (both databases
reachable and the phase is not ``resync_required``), 503 with the reason otherwise.
:func:`serve_metrics` reports the bound port through ``task_status`` (port 0 picks a
free one), so the daemon starts stages only once the endpoint is up.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("mongo2pg.metrics")

Readiness = Callable[[], Awaitable[tuple[bool, str]]]
_MAX_REQUEST = 8192


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8"
              ) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


async def _read_request(stream: anyio.abc.ByteStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < _MAX_REQUEST:
        chunk = await stream.receive(4096)
        if not chunk:
            break
        data += chunk
    return data


async def handle(request: bytes, ready: Readiness) -> bytes:
    """The response to one raw request (separate from the socket for testing)."""
    line = request.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) < 2:
        return _response("400 Bad Request", b"bad request\n")
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"GET only\n")
    if target == "/metrics":
        return _response("200 OK", generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
    if target == "/livez":
        return _response("200 OK", b"ok\n")
    if target == "/readyz":
        ok, reason = False, "readiness check timed out"
        with anyio.move_on_after(5):
            ok, reason = await ready()
        if ok:
            return _response("200 OK", b"ready\n")
        return _response("503 Service Unavailable", f"not ready: {reason}\n".encode())
    return _response("404 Not Found", b"not found\n")


async def serve_metrics(host: str, port: int, ready: Readiness, *,
                        task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
                        ) -> None:
    """Serve until cancelled; reports the bound port once listening."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    bound = int(listener.extra(SocketAttribute.local_port))

    async def on_connection(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(10):
                    request = await _read_request(stream)
                    await stream.send(await handle(request, ready))
            except (TimeoutError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                pass

    log.info("metrics endpoint listening", extra={"fields": {"host": host, "port": bound}})
    async with listener:
        task_status.started(bound)
        await listener.serve(on_connection)
