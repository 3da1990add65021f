"""What the tailer is configured with and what it needs of the sink.

:class:`StreamConfig` is the ``[stream]`` section (batch limits, ``fullDocument`` mode,
DDL policies, retry policy); :func:`validate` turns a bad namespace pattern or limit
into a :class:`~cdc.errors.ConfigError` naming the key. :class:`SinkPort` is the slice
of :class:`cdc.sink.Sink` the tailer calls. :mod:`cdc.stream` re-exports all of it.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import msgspec

from cdc.batch import Batch, Checkpoint
from cdc.errors import ConfigError
from cdc.retry import RetryPolicy
from cdc.types import Namespace

DdlPolicy = Literal["ignore", "mark", "follow"]


class StreamConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the change stream is read and applied."""

    batch_max_events: int = 5000
    """Cut a batch at this many events (soft: a source transaction is never split)."""
    batch_max_ms: int = 200
    """Apply an event at the latest this long after it was read."""
    full_document: Literal["updateLookup", "whenAvailable", "required"] = "updateLookup"
    """Where updates get their document: a lookup, or post-images (6.0+)."""
    max_await_ms: int = 1000
    """How long an idle ``getMore`` waits on the server for events."""
    ddl: dict[str, DdlPolicy] = {}
    """DDL policy per namespace pattern (``db.coll`` or ``db.*``)."""
    ddl_default: DdlPolicy = "mark"
    """Policy for namespaces ``ddl`` does not name."""
    split_large_events: bool = True
    """Append ``$changeStreamSplitLargeEvent`` (dropped if the server lacks it)."""
    lag_interval_ms: int = 1000
    """How often the lag gauge is refreshed from the server's operation time."""
    retry: RetryPolicy = RetryPolicy()


DEFAULT_CONFIG = StreamConfig()


class StagedPort(Protocol):
    """A batch staged in its open transaction (:meth:`cdc.sink.Sink.stage`)."""

    async def commit(self) -> Any: ...

    async def abort(self) -> None: ...


class SinkPort(Protocol):
    """What the tailer needs of :mod:`cdc.sink`."""

    async def apply(self, batch: Batch) -> Any: ...

    async def stage(self, batch: Batch) -> StagedPort: ...

    async def load_checkpoint(self, stream: str) -> Checkpoint | None: ...


def validate(include: list[str], config: StreamConfig) -> None:
    """Raise :class:`ConfigError` for a namespace pattern that is not ``db.coll``/``db.*``."""
    if not include:
        raise ConfigError("no namespace to stream", key="include")
    for key, patterns in (("include", include), ("stream.ddl", list(config.ddl))):
        for pattern in patterns:
            try:
                Namespace.parse(pattern)
            except ValueError as exc:
                raise ConfigError(str(exc), key=key) from None
    if config.batch_max_events < 1 or config.batch_max_ms < 1 or config.max_await_ms < 1:
        raise ConfigError("batch and wait limits must be positive", key="stream")


def matches(patterns: list[str], ns: Namespace) -> bool:
    return any(p == f"{ns.db}.*" or p == str(ns) for p in patterns)
