"""Serialises the first batch per namespace through the sink (table creation).

The sink creates a namespace's target tables on first sight over its one control-plane
connection; two tasks (the tailer and a backfill worker, or two workers) seeing a new
namespace at the same moment would interleave two DDL transactions on that connection.
:class:`GuardedSink` lets batches of already-seen namespaces through concurrently and
runs a batch that brings a new namespace alone, under a lock. Everything else is the
sink's own behaviour (same ``apply``, ``load_checkpoint``, pool and control schema).
"""

from __future__ import annotations

from typing import Any

import anyio

from cdc.batch import Batch, Checkpoint
from cdc.sink import Sink
from cdc.types import Namespace


class GuardedSink:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._seen: set[Namespace] = set()
        self._lock = anyio.Lock()

    async def apply(self, batch: Batch) -> Any:
        namespaces = {c.namespace for c in batch.changes}
        if namespaces <= self._seen:
            return await self.sink.apply(batch)
        async with self._lock:
            result = await self.sink.apply(batch)
            self._seen |= namespaces
            return result

    @property
    def pool(self) -> Any:
        """The sink's data-plane pool (the tailer keeps its state rows through it)."""
        return getattr(self.sink, "pool", None) or getattr(self.sink, "_pool", None)

    @property
    def control_schema(self) -> str:
        schema = getattr(self.sink, "control_schema", None) or self.sink._schema
        return str(schema)

    async def load_checkpoint(self, stream: str) -> Checkpoint | None:
        return await self.sink.load_checkpoint(stream)
