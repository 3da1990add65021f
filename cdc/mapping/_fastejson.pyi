"""Relaxed Extended JSON straight from raw BSON (C extension; see _fastejson.c)."""

def relaxed(
    raw: bytes | bytearray | memoryview, /
) -> tuple[bytes | None, str | None, bytes, str] | None:
    """The document-mode row ``(_key, _id text, _id_bson, relaxed JSON)`` of a raw
    document (``_key`` and ``_id`` text None unless ``_id`` is an ObjectId), or None
    when only the Python path can write it; raises ValueError for malformed BSON."""

def _set_buffer_capacity(n: int, /) -> None:
    """Tests only: give the output buffer exactly ``n`` bytes."""
