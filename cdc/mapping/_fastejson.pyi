"""Relaxed Extended JSON straight from raw BSON (C extension; see _fastejson.c)."""

from collections.abc import Sequence

def relaxed(
    raw: bytes | bytearray | memoryview, /
) -> tuple[bytes | None, str | None, bytes, str] | None:
    """The document-mode row ``(_key, _id text, _id_bson, relaxed JSON)`` of a raw
    document (``_key`` and ``_id`` text None unless ``_id`` is an ObjectId), or None
    when only the Python path can write it; raises ValueError for malformed BSON."""

LiftSpec = tuple[tuple[bytes, ...], int]

def copy_rows(
    raws: Sequence[bytes],
    versions: Sequence[int],
    streams: Sequence[bool] | None,
    positions: Sequence[int] | None,
    lifts: tuple[LiftSpec, ...] | None,
    children: tuple[tuple[tuple[bytes, ...], tuple[LiftSpec, ...]], ...],
    /,
) -> tuple[bytes, tuple[bytes, ...], list[bytes], list[int]]:
    """Binary COPY streams ``(root, children, keys, left)`` of raw documents (see
    _copyrows.c); ``lifts`` None for document mode."""

def _set_buffer_capacity(n: int, /) -> None:
    """Tests only: give the output buffer exactly ``n`` bytes."""
