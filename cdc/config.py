"""Configuration structs owned by the replication core.

Each stage defines its own struct; :mod:`ops.config` composes them into the file format.
Structs forbid unknown fields so a misspelt key stops startup instead of being ignored.
"""

from __future__ import annotations

import msgspec


class SourceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where to read from. ``uri`` is a secret: it may carry a password."""

    uri: str = ""
    """MongoDB connection string of a replica set or mongos (env: MONGO2PG_SOURCE_URI)."""


class TargetConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where to write to. ``dsn`` is a secret: it may carry a password."""

    dsn: str = ""
    """PostgreSQL connection string (env: MONGO2PG_TARGET_DSN)."""
    control_schema: str = "mongo2pg"
    """Schema holding checkpoints, chunks, tombstones, dead letters, phase and audit."""
