"""The metrics port's responses: /metrics, /livez, /readyz, unknown paths."""

from __future__ import annotations

import pytest

from cdc.types import Phase
from ops.metrics import handle
from ops.phases import export

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def ready() -> tuple[bool, str]:
    return True, "ok"


async def not_ready() -> tuple[bool, str]:
    return False, "phase resync_required"


async def test_metrics_exposes_the_phase_gauge() -> None:
    export(Phase.CATCHING_UP)
    reply = await handle(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", ready)
    assert reply.startswith(b"HTTP/1.1 200")
    assert b'mongo2pg_phase{phase="catching_up"} 1.0' in reply
    assert b'mongo2pg_phase{phase="in_sync"} 0.0' in reply


async def test_readyz_reflects_the_readiness_check() -> None:
    assert (await handle(b"GET /readyz HTTP/1.1\r\n\r\n", ready)).startswith(b"HTTP/1.1 200")
    reply = await handle(b"GET /readyz HTTP/1.1\r\n\r\n", not_ready)
    assert reply.startswith(b"HTTP/1.1 503") and b"resync_required" in reply


async def test_livez_and_errors() -> None:
    assert (await handle(b"GET /livez HTTP/1.1\r\n\r\n", not_ready)).startswith(b"HTTP/1.1 200")
    assert (await handle(b"GET /nope HTTP/1.1\r\n\r\n", ready)).startswith(b"HTTP/1.1 404")
    assert (await handle(b"POST /metrics HTTP/1.1\r\n\r\n", ready)).startswith(b"HTTP/1.1 405")
    assert (await handle(b"garbage", ready)).startswith(b"HTTP/1.1 400")
