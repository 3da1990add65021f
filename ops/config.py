"""The configuration file: TOML decoded into msgspec structs, unknown keys forbidden.

The file composes the structs each stage owns. Secrets may come from the environment
(``MONGO2PG_SOURCE_URI``, ``MONGO2PG_TARGET_DSN``), which override the file; flags on the
command line override both. Any problem — unreadable file, bad TOML, unknown key, wrong
type, missing required value — raises :class:`~cdc.errors.ConfigError` naming the key
and the file; the CLI turns it into one line on stderr and exit code 2.

Example::

    [source]
    uri = "mongodb://host1,host2/?replicaSet=rs0"

    [target]
    dsn = "postgresql://migrator@pg/app"

    include = ["shop.*", "crm.contacts"]   # top level: namespaces to migrate

    [metrics]
    port = 9187

    [log]
    format = "json"
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from backfill.config import BackfillConfig
from cdc.config import SourceConfig, TargetConfig
from cdc.errors import ConfigError
from cdc.mapping import validate as validate_mapping
from cdc.mapping.config import MappingConfig
from cdc.stream import StreamConfig
from cdc.types import Namespace
from ops.redact import redact

ENV_SOURCE_URI = "MONGO2PG_SOURCE_URI"
ENV_TARGET_DSN = "MONGO2PG_TARGET_DSN"


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The HTTP endpoint serving ``/metrics``, ``/livez`` and ``/readyz``."""

    host: str = "127.0.0.1"
    port: int = 9187


class LogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Logging: ``text`` for a terminal, ``json`` for a log pipeline."""

    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class PhaseConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """When the phase machine moves (``[phases]``)."""

    in_sync_lag_seconds: float = 5.0
    """``catching_up`` becomes ``in_sync`` at or below this lag (back above twice it)."""
    check_interval_seconds: float = 1.0


class DaemonConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How ``mongo2pg run`` behaves as a process (``[daemon]``)."""

    drain_timeout_seconds: float = 20.0
    """After SIGTERM, how long current batches may take before the process exits anyway."""
    progress: Literal["auto", "on", "off"] = "auto"
    """The backfill progress line on stderr: ``auto`` = only on a terminal."""


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole configuration file."""

    include: list[str] = []
    """Namespaces to migrate: ``db.coll`` or ``db.*`` for every collection of ``db``."""
    source: SourceConfig = SourceConfig()
    target: TargetConfig = TargetConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    mapping: MappingConfig = MappingConfig()
    """How namespaces become tables (README "Mapping"); checked by cdc.mapping.validate."""
    stream: StreamConfig = StreamConfig()
    backfill: BackfillConfig = BackfillConfig()
    phases: PhaseConfig = PhaseConfig()
    daemon: DaemonConfig = DaemonConfig()

    def namespaces(self) -> list[str]:
        return list(self.include)


_PATH_IN_MSG = re.compile(r"at `\$((?:\.[^`\[]+|\[\d+\])*)`")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")


def _key_from_validation(message: str) -> str | None:
    path = ""
    m = _PATH_IN_MSG.search(message)
    if m:
        path = m.group(1).lstrip(".")
    for pattern in (_UNKNOWN_FIELD, _MISSING_FIELD):
        f = pattern.search(message)
        if f:
            return f"{path}.{f.group(1)}" if path else f.group(1)
    return path or None


def decode_config(data: Mapping[str, Any], *, source: str) -> Config:
    """Validate a decoded TOML mapping into :class:`Config`."""
    try:
        config = msgspec.convert(dict(data), Config, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        key = _key_from_validation(message)
        reason = message.split(" - at ")[0]
        raise ConfigError(reason, key=key, source=source) from None
    for i, pattern in enumerate(config.include):
        try:
            validate_include(pattern)
        except ValueError as exc:
            raise ConfigError(str(exc), key=f"include[{i}]", source=source) from None
    try:  # mapping rules, and the tables of the namespaces known now
        validate_mapping(config.mapping, [p for p in config.include if not p.endswith(".*")])
    except ConfigError as exc:
        raise ConfigError(str(exc), key=exc.key, source=source) from None
    return config


def validate_include(pattern: str) -> None:
    """Check one ``include`` entry: ``db.coll`` or ``db.*``."""
    Namespace.parse(pattern)


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read ``path`` (or use defaults when ``None``), then apply the environment."""
    if path is None:
        config = Config()
        source = "<defaults>"
    else:
        source = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read file ({exc.strerror})", source=source) from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"not valid TOML: {exc}", source=source) from None
        config = decode_config(data, source=source)
    return apply_environment(config, os.environ)


def apply_environment(config: Config, env: Mapping[str, str]) -> Config:
    """Environment variables override the file (secrets are best kept out of files)."""
    source = config.source
    target = config.target
    if env.get(ENV_SOURCE_URI):
        source = msgspec.structs.replace(source, uri=env[ENV_SOURCE_URI])
    if env.get(ENV_TARGET_DSN):
        target = msgspec.structs.replace(target, dsn=env[ENV_TARGET_DSN])
    return msgspec.structs.replace(config, source=source, target=target)


def override(config: Config, **changes: Any) -> Config:
    """Apply command-line flags (``source_uri``, ``target_dsn``, ``include``) over the file."""
    if changes.get("source_uri"):
        config = msgspec.structs.replace(
            config, source=msgspec.structs.replace(config.source, uri=changes["source_uri"])
        )
    if changes.get("target_dsn"):
        config = msgspec.structs.replace(
            config, target=msgspec.structs.replace(config.target, dsn=changes["target_dsn"])
        )
    if changes.get("include"):
        for i, pattern in enumerate(changes["include"]):
            try:
                validate_include(pattern)
            except ValueError as exc:
                raise ConfigError(str(exc), key=f"--include[{i}]") from None
        config = msgspec.structs.replace(config, include=list(changes["include"]))
    return config


def require(config: Config) -> None:
    """Check the values a running daemon cannot do without."""
    if not config.source.uri:
        raise ConfigError(f"no MongoDB URI (set it, or {ENV_SOURCE_URI}, or --source)",
                          key="source.uri")
    if not config.target.dsn:
        raise ConfigError(f"no PostgreSQL DSN (set it, or {ENV_TARGET_DSN}, or --target)",
                          key="target.dsn")
    if not config.include:
        raise ConfigError("no namespaces to migrate (set it or pass --include)", key="include")


def render_redacted(config: Config) -> str:
    """The effective configuration as JSON, with every secret masked."""
    return redact(msgspec.json.format(msgspec.json.encode(config).decode(), indent=2))
