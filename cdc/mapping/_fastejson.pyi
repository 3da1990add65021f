"""Relaxed Extended JSON straight from raw BSON (C extension; see _fastejson.c)."""

def relaxed(raw: bytes | bytearray | memoryview, /) -> tuple[str, int, int] | None:
    """``(text, id_start, id_end)``, or None when only the Python path can write the
    document; raises ValueError for malformed BSON."""
