"""Change-event envelopes located in raw BSON (C extension; see _fastevents.c)."""

def scan(
    raw: bytes | bytearray | memoryview, /
) -> tuple[int, int, int, int, int, int, int, int, int, int, int, int, int, int | None] | None:
    """Offsets of a data event's envelope fields ``(op, token_start, token_end, t, i,
    ns_start, ns_end, key_start, key_end, full_start, full_end, lsid_start, lsid_end,
    txn_number)`` (-1 / None where absent), or None where the Python path declines."""

def split_array(buf: bytes, start: int, stop: int, /) -> list[bytes]:
    """The documents of the BSON array elements from ``start`` (the first element's type
    byte) to ``stop`` (the array's terminating NUL), each as bytes; ``ValueError`` where
    an element is malformed."""
