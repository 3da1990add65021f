"""Helpers for reading change streams in tests without sleeping."""

from __future__ import annotations

import time
from typing import Any

from pymongo.change_stream import ChangeStream


def take(stream: ChangeStream[Any], n: int, seconds: float = 10.0) -> list[dict[str, Any]]:
    """The next ``n`` events of ``stream``; fails if they do not come within ``seconds``."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while len(out) < n:
        assert time.monotonic() < deadline, f"got {len(out)} of {n} events: {out}"
        event = stream.try_next()
        if event is not None:
            out.append(event)
        elif not stream.alive:
            break
    return out


def drain(stream: ChangeStream[Any]) -> list[dict[str, Any]]:
    """Every event already available (stops at the first empty batch)."""
    out: list[dict[str, Any]] = []
    while stream.alive:
        event = stream.try_next()
        if event is None:
            break
        out.append(event)
    return out
