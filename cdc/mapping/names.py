"""PostgreSQL identifiers for MongoDB names: at most 63 bytes, deterministic, checked.

PostgreSQL truncates identifiers to ``NAMEDATALEN - 1`` = 63 bytes, silently; two long
collection names sharing a prefix would then land on one table. :func:`pg_identifier`
shortens a name that is too long itself: it keeps a prefix cut at a character boundary
and appends ``_`` plus 8 hex digits of the SHA-256 of the full name, so the same source
name always gives the same identifier and distinct long names (almost surely) differ.
Whatever remains — two source names on one identifier — is caught by
:func:`check_unique`, which raises :class:`ConfigError` naming the config key, at
startup. Names are used verbatim otherwise (the sink quotes them with ``psycopg.sql``,
so case, dots, dashes and spaces are kept).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from cdc.errors import ConfigError

MAX_IDENTIFIER_BYTES = 63
_HASH_CHARS = 8


def pg_identifier(name: str) -> str:
    """``name`` itself if it fits in 63 UTF-8 bytes, else a hashed, shortened form."""
    data = name.encode("utf-8")
    if not name:
        raise ConfigError("an identifier cannot be empty")
    if "\x00" in name:
        raise ConfigError(f"identifier {name!r} contains U+0000")
    if len(data) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha256(data).hexdigest()[:_HASH_CHARS]
    prefix = data[: MAX_IDENTIFIER_BYTES - _HASH_CHARS - 1].decode("utf-8", "ignore")
    return f"{prefix}_{digest}"


def check_unique(pairs: Iterable[tuple[str, str]], *, key: str, what: str) -> None:
    """Raise ConfigError when two sources map to one identifier.

    ``pairs`` are ``(source, identifier)``; ``key`` names the config key in the error.
    """
    seen: dict[str, str] = {}
    for source, ident in pairs:
        other = seen.get(ident)
        if other is not None and other != source:
            raise ConfigError(
                f"{what} {other!r} and {source!r} both map to the identifier {ident!r}",
                key=key,
            )
        seen[ident] = source
