"""Change streams (placeholder while being written)."""

from __future__ import annotations

from typing import Any

from ops.sandbox.cursors import Cursor
from ops.sandbox.errors import CommandError


class StreamCursor(Cursor):
    def get_more(self, ctx: Any, size: Any) -> Any:
        raise CommandError(2, "not yet")


def open_stream(ctx: Any, pipeline: Any) -> Any:
    raise CommandError(2, "not yet")
