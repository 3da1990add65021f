"""Top-level elements of a raw BSON document, without decoding their values.

:func:`elements` walks a document's bytes once and maps every top-level field name to
the bytes of its element's type and value, using only the BSON length rules (fixed
sizes, int32-prefixed strings, documents, arrays and binaries, cstring regexes). Two
fields whose element bytes are equal hold the same value of the same type, so an
update's ``updateDescription`` need only look (decoded) at the fields whose bytes
differ. A document this walker cannot read raises ``ValueError``.
"""

from __future__ import annotations

import struct

_INT32 = struct.Struct("<i")
_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8,
          0x12: 8, 0x13: 16, 0x7F: 0, 0xFF: 0}
_STRING_LIKE = frozenset({0x02, 0x0D, 0x0E})     # string, JavaScript code, symbol
_LENGTH_PREFIXED = frozenset({0x03, 0x04, 0x0F})  # document, array, code with scope


def elements(raw: bytes) -> dict[str, bytes]:
    """``{field: type byte + value bytes}`` for every top-level field of ``raw``."""
    out: dict[str, bytes] = {}
    end = len(raw) - 1
    pos = 4
    while pos < end:
        kind = raw[pos]
        name_end = raw.index(b"\x00", pos + 1)
        name = raw[pos + 1:name_end].decode()
        start = name_end + 1
        size = _FIXED.get(kind)
        if size is None:
            if kind in _STRING_LIKE:
                size = 4 + _INT32.unpack_from(raw, start)[0]
            elif kind in _LENGTH_PREFIXED:
                size = _INT32.unpack_from(raw, start)[0]
            elif kind == 0x05:
                size = 5 + _INT32.unpack_from(raw, start)[0]
            elif kind == 0x0B:
                size = raw.index(b"\x00", raw.index(b"\x00", start) + 1) + 1 - start
            elif kind == 0x0C:
                size = 4 + _INT32.unpack_from(raw, start)[0] + 12
            else:
                raise ValueError(f"unknown BSON type 0x{kind:02x}")
        value_end = start + size
        if size < 0 or value_end > end:
            raise ValueError("truncated BSON element")
        out[name] = bytes([kind]) + raw[start:value_end]
        pos = value_end
    return out
