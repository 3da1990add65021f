"""Change events: resume tokens, the event documents and large-event splitting.

A resume token is ``{_data: hex}`` where the hex spells, fixed-width, the oplog
position it stands for — ``"82" t(8) i(8) index+1(8) fragment(4) kind(2)`` — so
tokens of one deployment sort as their positions do (clients must still treat them
as opaque). ``kind`` is 0 for an event or a high-water mark and 1 for an
``invalidate``; ``fragment`` is 0 for a whole event, else the 1-based fragment of a
split one. A high-water mark (``postBatchResumeToken`` of a stream that has scanned to
the end of the oplog) uses index ``HIGH_WATER`` at the current cluster time, so
resuming from it starts with the next write.

:func:`build` turns one oplog entry into the event document the manual describes for
its ``operationType`` (``_id``, ``operationType``, ``clusterTime``, ``wallTime``,
``ns``, ``documentKey``, ``fullDocument``, ``updateDescription``,
``fullDocumentBeforeChange``, ``lsid``/``txnNumber``, ``to``, ``operationDescription``
…), honouring the stream's ``fullDocument`` / ``fullDocumentBeforeChange`` modes.
:func:`build_raw` produces the same bytes as ``bson.encode(build(...))`` for document
events without building a dict: envelope, ``ns`` + ``documentKey`` and (for streams
without expanded events) ``updateDescription`` are encoded once per oplog entry and
cached on it, and stored documents are spliced in as raw bytes.
:func:`split` cuts an event over 16 MiB into ``splitEvent {fragment, of}`` pieces, as
``$changeStreamSplitLargeEvent`` does, each under the limit and with its own token.
"""

from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument

from ops.sandbox.bsonkey import sort_key
from ops.sandbox.errors import CommandError
from ops.sandbox.oplog import Entry, Position
from ops.sandbox.store import Store

MAX_EVENT = 16 * 1024 * 1024
HIGH_WATER = 0xFFFFFFF0
EVENT, INVALIDATE = 0, 1
DOC_OPS = frozenset({"insert", "update", "replace", "delete"})
EXPANDED_OPS = frozenset({"create", "createIndexes", "dropIndexes", "modify"})


@dataclass(frozen=True)
class Token:
    pos: Position
    fragment: int = 0
    kind: int = EVENT

    def doc(self) -> dict[str, str]:
        t, i, index = self.pos
        return {"_data": f"82{t:08X}{i:08X}{index + 1:08X}{self.fragment:04X}{self.kind:02X}"}

    @staticmethod
    def parse(value: Any) -> Token:
        data = value.get("_data") if isinstance(value, dict) else None
        if not isinstance(data, str) or len(data) != 32 or not data.startswith("82"):
            raise CommandError(260, "resume token is not one this server issued")
        try:
            t, i, index = int(data[2:10], 16), int(data[10:18], 16), int(data[18:26], 16) - 1
            return Token((t, i, index), int(data[26:30], 16), int(data[30:32], 16))
        except ValueError as exc:
            raise CommandError(260, "malformed resume token") from exc


@dataclass(frozen=True)
class Options:
    full_document: str = "default"
    before_change: str = "off"
    expanded: bool = False


def _raw(value: bytes | None) -> RawBSONDocument | None:
    return None if value is None else RawBSONDocument(value)


def _lookup(store: Store, entry: Entry) -> RawBSONDocument | None:
    coll = store.get(entry.db, entry.coll or "")
    if coll is None or entry.key is None:
        return None
    return _raw(coll.get(sort_key(entry.key["_id"])))


def build(entry: Entry, opts: Options, store: Store) -> dict[str, Any]:
    """The event document for ``entry`` (token added by the caller as ``_id``)."""
    op = entry.op
    ev: dict[str, Any] = {"_id": Token(entry.pos).doc(), "operationType": op,
                          "clusterTime": entry.ts, "wallTime": entry.wall}
    if opts.expanded and entry.uuid is not None:
        ev["collectionUUID"] = entry.uuid
    if op in DOC_OPS:
        if op in ("insert", "replace"):
            ev["fullDocument"] = _raw(entry.post)
        elif op == "update" and opts.full_document == "updateLookup":
            ev["fullDocument"] = _lookup(store, entry)
        elif op == "update" and opts.full_document in ("whenAvailable", "required"):
            if entry.post is None and opts.full_document == "required":
                raise CommandError(280, "Change stream was configured to require a post-image "
                                        "for all update events, but none was found")
            ev["fullDocument"] = _raw(entry.post)
        ev["ns"] = {"db": entry.db, "coll": entry.coll}
        ev["documentKey"] = entry.key
        if op == "update" and entry.update is not None:
            desc = dict(entry.update)
            if not opts.expanded:
                desc.pop("disambiguatedPaths", None)
            ev["updateDescription"] = desc
        if opts.before_change in ("whenAvailable", "required") and op != "insert":
            if entry.pre is None and opts.before_change == "required":
                raise CommandError(280, "Change stream was configured to require a pre-image "
                                        "for all update, delete and replace events, but none "
                                        "was found")
            ev["fullDocumentBeforeChange"] = _raw(entry.pre)
    elif op == "dropDatabase":
        ev["ns"] = {"db": entry.db}
    else:
        ev["ns"] = {"db": entry.db, "coll": entry.coll}
        extra = entry.extra or {}
        if op == "rename":
            ev["to"] = extra["to"]
        if opts.expanded and "operationDescription" in extra:
            ev["operationDescription"] = extra["operationDescription"]
        if opts.expanded and "stateBeforeChange" in extra:
            ev["stateBeforeChange"] = extra["stateBeforeChange"]
    if entry.lsid is not None:
        ev["lsid"] = entry.lsid
        ev["txnNumber"] = entry.txn
    return ev


_FULL = b"\x03fullDocument\x00"
_FULL_NULL = b"\x0afullDocument\x00"
_BEFORE = b"\x03fullDocumentBeforeChange\x00"
_BEFORE_NULL = b"\x0afullDocumentBeforeChange\x00"
_LENGTH = struct.Struct("<i")


def _elements(fields: dict[str, Any]) -> bytes:
    """The encoded elements of ``fields``, without the document's framing."""
    return bson.encode(fields)[4:-1]


_ID_TOKEN = b"\x03_id\x00" + _LENGTH.pack(49) + b"\x02_data\x00" + _LENGTH.pack(33)
_TS = struct.Struct("<II")
_MILLIS = struct.Struct("<q")
_EPOCH = datetime.datetime(1970, 1, 1)
_MS = datetime.timedelta(milliseconds=1)


def _head(entry: Entry) -> bytes:
    """``_id`` (the token), ``operationType``, ``clusterTime`` and ``wallTime``."""
    t, i, index = entry.pos
    op = entry.op.encode()
    wall = entry.wall
    if wall.tzinfo is not None:
        return _elements({"_id": Token(entry.pos).doc(), "operationType": entry.op,
                          "clusterTime": entry.ts, "wallTime": wall})
    return b"".join((
        _ID_TOKEN, f"82{t:08X}{i:08X}{index + 1:08X}000000".encode(), b"\x00\x00",
        b"\x02operationType\x00", _LENGTH.pack(len(op) + 1), op, b"\x00",
        b"\x11clusterTime\x00", _TS.pack(entry.ts.inc, entry.ts.time),
        b"\x09wallTime\x00", _MILLIS.pack((wall - _EPOCH) // _MS)))


def encode_parts(entry: Entry) -> Entry:
    """Encode a data entry's envelope (``_id`` … ``wallTime``) and ``ns`` +
    ``documentKey`` once, when the write is recorded — as a server writes its oplog entry
    then —, so serving a change stream only joins bytes (a backlog read is as cheap the
    first time as the second). Other entries are left as they are."""
    if entry.op in DOC_OPS:
        entry.head = _head(entry)
        entry.mid = _elements({"ns": {"db": entry.db, "coll": entry.coll},
                               "documentKey": entry.key})
        if entry.op == "update" and entry.key is not None:
            entry.lookup = sort_key(entry.key["_id"])
            if entry.update is not None:
                entry.desc = _update_description(entry.update)
    return entry


def _update_description(desc: dict[str, Any]) -> bytes:
    """The ``updateDescription`` element without ``disambiguatedPaths`` (the common,
    non-expanded form)."""
    return _elements({"updateDescription": {
        k: v for k, v in desc.items() if k != "disambiguatedPaths"}})


def build_raw(entry: Entry, opts: Options, store: Store) -> bytes:
    """``bson.encode(build(entry, opts, store))``, assembled from pre-encoded parts.

    The envelope and ``ns`` + ``documentKey`` come encoded with the entry
    (:func:`encode_parts`); documents are spliced in as the stored raw bytes, so a
    document event costs a few byte concatenations.
    """
    op = entry.op
    if op not in DOC_OPS:
        return bson.encode(build(entry, opts, store))
    if entry.head is None:  # an entry not recorded through entry_for
        encode_parts(entry)
    assert entry.head is not None and entry.mid is not None
    mid = entry.mid
    parts = [entry.head]
    if opts.expanded and entry.uuid is not None:
        parts.append(_elements({"collectionUUID": entry.uuid}))
    has_full, full = True, None
    if op in ("insert", "replace"):
        full = entry.post
    elif op == "update" and opts.full_document == "updateLookup":
        coll = store.get(entry.db, entry.coll or "")
        full = None if coll is None or entry.lookup is None else coll.get(entry.lookup)
    elif op == "update" and opts.full_document in ("whenAvailable", "required"):
        if entry.post is None and opts.full_document == "required":
            raise CommandError(280, "Change stream was configured to require a post-image "
                                    "for all update events, but none was found")
        full = entry.post
    else:
        has_full = False
    if has_full:
        parts += (_FULL_NULL,) if full is None else (_FULL, full)
    parts.append(mid)
    if op == "update" and entry.update is not None:
        desc = entry.update
        if opts.expanded:
            parts.append(_elements({"updateDescription": desc}))
        else:   # the common case, encoded once: without disambiguatedPaths
            parts.append(entry.desc or _update_description(desc))
    if opts.before_change in ("whenAvailable", "required") and op != "insert":
        if entry.pre is None:
            if opts.before_change == "required":
                raise CommandError(280, "Change stream was configured to require a pre-image "
                                        "for all update, delete and replace events, but none "
                                        "was found")
            parts.append(_BEFORE_NULL)
        else:
            parts += (_BEFORE, entry.pre)
    if entry.lsid is not None:
        parts.append(_elements({"lsid": entry.lsid, "txnNumber": entry.txn}))
    body = b"".join(parts)
    return _LENGTH.pack(len(body) + 5) + body + b"\x00"


def invalidate(entry: Entry) -> dict[str, Any]:
    return {"_id": Token(entry.pos, 0, INVALIDATE).doc(), "operationType": "invalidate",
            "clusterTime": entry.ts, "wallTime": entry.wall}


def _element_size(key: str, value: Any) -> int:
    return len(bson.encode({key: value})) - 5


def split(event: dict[str, Any], pos: Position) -> list[tuple[Token, bytes]]:
    """Fragments of an oversized event, in order, each with its own token."""
    overhead = 200  # _id token + splitEvent {fragment, of} + document framing
    groups: list[list[str]] = [[]]
    used = overhead
    for key, value in event.items():
        if key == "_id":
            continue
        size = _element_size(key, value)
        if size + overhead > MAX_EVENT:
            raise CommandError(10334, f"BSONObjectTooLarge: field '{key}' of a change event "
                                      "is too large to fit in any fragment")
        if groups[-1] and used + size > MAX_EVENT:
            groups.append([])
            used = overhead
        groups[-1].append(key)
        used += size
    out = []
    for n, keys in enumerate(groups, start=1):
        token = Token(pos, n)
        frag = {"_id": token.doc(), **{k: event[k] for k in keys},
                "splitEvent": {"fragment": n, "of": len(groups)}}
        out.append((token, bson.encode(frag)))
    return out
