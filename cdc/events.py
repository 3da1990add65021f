"""Change events: a typed envelope around raw BSON, decoded once per event.

A change stream reply carries events as raw BSON (``RawBSONDocument``). :func:`decode_event`
reads only the envelope — ``operationType``, ``_id`` (the resume token), ``clusterTime``,
``ns``, ``documentKey``, ``lsid``/``txnNumber`` — into a member of the tagged union
:data:`ChangeEvent`; the document bodies (``fullDocument``) stay raw BSON bytes and are
handed to the mapping untouched, so the hot path builds no Python object per field.
The tailer's hot path goes one step further: :func:`decode_raw` walks the top-level
elements of a data event's bytes (lengths only) and slices the envelope fields out, with
no ``RawBSONDocument`` or dict at all; anything else (DDL, fragments, an unexpected
type) it declines, and :func:`decode_event` judges it. The walk runs in C
(``cdc/_fastevents.c``, ~1 µs an event instead of ~8) when the extension is built, with
the verdicts of the Python walker kept beside it (tests compare both byte for byte).

* Data events: :class:`Insert`, :class:`Update`, :class:`Replace`, :class:`Delete`.
* DDL events: :class:`Drop`, :class:`Rename`, :class:`DropDatabase`, :class:`Invalidate`.
* :class:`Unknown` — any other ``operationType`` (``create``, ``createIndexes``,
  ``modify``… with ``showExpandedEvents``, or types a newer server invents). It keeps its
  token so the stream can move past it; the tailer counts it and logs one line.

Events over 16 MiB arrive as fragments when the pipeline ends with
``$changeStreamSplitLargeEvent`` (each fragment has ``splitEvent {fragment, of}``, a
subset of the top-level fields and its own token). :class:`FragmentAssembler` joins
them back into one event that carries the *last* fragment's token, so a checkpoint
never points into the middle of an event.

Resume tokens are opaque (compare for equality only) with one documented exception we
rely on to date an empty batch: a ``_data`` KeyString starting with type byte ``0x82``
(Timestamp) encodes the cluster time it stands for (:func:`token_cluster_time`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from struct import Struct
from struct import error as struct_error
from typing import Any

import bson
import msgspec
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from cdc.errors import DataError, MappingError
from cdc.mapping.keys import id_bson_from_raw
from cdc.types import ClusterTime, Namespace


class EventDecodeError(DataError):
    """Raised when a change event lacks a field its operation type requires."""


class TxnId(msgspec.Struct, frozen=True):
    """Identity of a source transaction: events sharing it commit together."""

    lsid: bytes
    """Raw BSON of the logical session id document."""
    txn_number: int


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="op"):
    token: bytes
    """Raw BSON of the event's ``_id`` (its resume token)."""
    cluster_time: ClusterTime
    txn: TxnId | None = None


class Insert(_Event, frozen=True, tag="insert"):
    ns: Namespace
    document_key: bytes
    """Raw BSON of ``documentKey`` (``_id`` plus shard key fields)."""
    full_document: bytes | None


class Update(_Event, frozen=True, tag="update"):
    ns: Namespace
    document_key: bytes
    full_document: bytes | None
    """Looked-up or post-image document; ``None`` when not requested or already gone."""


class Replace(_Event, frozen=True, tag="replace"):
    ns: Namespace
    document_key: bytes
    full_document: bytes | None


class Delete(_Event, frozen=True, tag="delete"):
    ns: Namespace
    document_key: bytes


class Drop(_Event, frozen=True, tag="drop"):
    ns: Namespace


class Rename(_Event, frozen=True, tag="rename"):
    ns: Namespace
    to: Namespace


class DropDatabase(_Event, frozen=True, tag="dropDatabase"):
    db: str


class Invalidate(_Event, frozen=True, tag="invalidate"):
    pass


class Unknown(_Event, frozen=True, tag="unknown"):
    operation_type: str


ChangeEvent = (
    Insert | Update | Replace | Delete | Drop | Rename | DropDatabase | Invalidate | Unknown
)
DataEvent = Insert | Update | Replace | Delete

def _raw(value: Any) -> bytes:
    if isinstance(value, RawBSONDocument):
        return bytes(value.raw)
    if isinstance(value, Mapping):
        return bson.encode(value)
    raise EventDecodeError(f"expected a document, got {type(value).__name__}")


_NS_CACHE: dict[bytes, Namespace] = {}


def _ns(value: Any) -> Namespace:
    # Events of a namespace repeat the same few bytes: decode them once.
    key = bytes(value.raw) if isinstance(value, RawBSONDocument) else None
    if key is not None:
        found = _NS_CACHE.get(key)
        if found is not None:
            return found
    if not isinstance(value, Mapping) or "db" not in value or "coll" not in value:
        raise EventDecodeError("event has no complete 'ns'")
    ns = Namespace(str(value["db"]), str(value["coll"]))
    if key is not None and len(_NS_CACHE) < 10_000:
        _NS_CACHE[key] = ns
    return ns


def _cluster_time(doc: Mapping[str, Any]) -> ClusterTime:
    ts = doc.get("clusterTime")
    if not isinstance(ts, Timestamp):
        raise EventDecodeError("event has no 'clusterTime' timestamp")
    return ClusterTime(ts.time, ts.inc)


def _txn(doc: Mapping[str, Any]) -> TxnId | None:
    lsid = doc.get("lsid")
    number = doc.get("txnNumber")
    if lsid is None or number is None:
        return None
    return TxnId(_raw(lsid), int(number))


def _full(doc: Mapping[str, Any]) -> bytes | None:
    value = doc.get("fullDocument")
    return None if value is None else _raw(value)


def decode_event(doc: Mapping[str, Any]) -> ChangeEvent:
    """The typed envelope of one (reassembled) change event.

    ``doc`` is normally a ``RawBSONDocument``: top-level fields are decoded, nested
    documents stay raw. Raises :class:`EventDecodeError` when a required field is absent.
    """
    if "_id" not in doc:
        raise EventDecodeError("event has no resume token '_id'")
    token = _raw(doc["_id"])
    cluster_time = _cluster_time(doc)
    txn = _txn(doc)
    op = doc.get("operationType")
    if op == "insert":
        return Insert(token=token, cluster_time=cluster_time, txn=txn, ns=_ns(doc.get("ns")),
                      document_key=_raw(doc.get("documentKey")), full_document=_full(doc))
    if op == "update":
        return Update(token=token, cluster_time=cluster_time, txn=txn, ns=_ns(doc.get("ns")),
                      document_key=_raw(doc.get("documentKey")), full_document=_full(doc))
    if op == "replace":
        return Replace(token=token, cluster_time=cluster_time, txn=txn, ns=_ns(doc.get("ns")),
                       document_key=_raw(doc.get("documentKey")), full_document=_full(doc))
    if op == "delete":
        return Delete(token=token, cluster_time=cluster_time, txn=txn, ns=_ns(doc.get("ns")),
                      document_key=_raw(doc.get("documentKey")))
    if op == "drop":
        return Drop(token=token, cluster_time=cluster_time, txn=txn, ns=_ns(doc.get("ns")))
    if op == "rename":
        return Rename(token=token, cluster_time=cluster_time, txn=txn, ns=_ns(doc.get("ns")),
                      to=_ns(doc.get("to")))
    if op == "dropDatabase":
        ns = doc.get("ns")
        if not isinstance(ns, Mapping) or "db" not in ns:
            raise EventDecodeError("dropDatabase event has no 'ns.db'")
        return DropDatabase(token=token, cluster_time=cluster_time, txn=txn, db=str(ns["db"]))
    if op == "invalidate":
        return Invalidate(token=token, cluster_time=cluster_time, txn=txn)
    return Unknown(token=token, cluster_time=cluster_time, txn=txn, operation_type=str(op))


_I32 = Struct("<i")
_TS = Struct("<II")
_Q64 = Struct("<q")
_FIXED = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8,
          0x13: 16, 0x06: 0, 0x7F: 0, 0xFF: 0}
_SIZED = frozenset({0x02, 0x0D, 0x0E})  # int32 length + bytes (string-like)
_DOCS = frozenset({0x03, 0x04, 0x0F})  # the int32 length counts itself
_WANTED = frozenset({b"_id", b"operationType", b"clusterTime", b"ns", b"documentKey",
                     b"fullDocument", b"lsid", b"txnNumber", b"splitEvent", b"to"})
_DATA_OPS: dict[str, type[Insert | Update | Replace | Delete]] = {
    "insert": Insert, "update": Update, "replace": Replace, "delete": Delete}
_BODY_OPS: dict[type, type[Insert | Update | Replace]] = {
    Insert: Insert, Update: Update, Replace: Replace}


ScanResult = tuple[int, int, int, int, int, int, int, int, int, int, int, int, int,
                   int | None]
_scan_c: Callable[[bytes], ScanResult | None] | None
try:
    from cdc._fastevents import scan as _scan_c
except ImportError:  # extension not built (e.g. a plain source checkout): Python walker
    _scan_c = None
_BY_CODE: tuple[type[Insert | Update | Replace], ...] = (Insert, Update, Replace)


def decode_raw(raw: bytes) -> ChangeEvent | None:
    """:func:`decode_event` for a data event given as BSON bytes, reading only the
    envelope's bytes (no ``RawBSONDocument``, no dict of the top level). ``None`` when
    the fast path does not apply — a fragment, a DDL or unknown event, or any field of
    an unexpected BSON type — and the caller decodes it the general way. The walk over
    the top-level elements runs in C (:mod:`cdc._fastevents`) when it is built, with
    the same verdicts as the Python walker (:func:`_scan`)."""
    try:
        if _scan_c is not None:
            found = _scan_c(raw)
            return None if found is None else _from_offsets(raw, found)
        return _decode_raw(raw)
    except (struct_error, ValueError, IndexError):  # UnicodeDecodeError is a ValueError
        return None


def _from_offsets(raw: bytes, found: ScanResult) -> ChangeEvent:
    op, token_s, token_e, t, i, ns_s, ns_e, key_s, key_e, full_s, full_e, lsid_s, lsid_e, \
        number = found
    ns_bytes = raw[ns_s:ns_e]
    namespace = _NS_CACHE.get(ns_bytes)
    if namespace is None:
        namespace = _ns(RawBSONDocument(ns_bytes))
    txn = None if number is None else TxnId(raw[lsid_s:lsid_e], number)
    if op == 3:
        return Delete(token=raw[token_s:token_e], cluster_time=ClusterTime(t, i), txn=txn,
                      ns=namespace, document_key=raw[key_s:key_e])
    return _BY_CODE[op](token=raw[token_s:token_e], cluster_time=ClusterTime(t, i), txn=txn,
                        ns=namespace, document_key=raw[key_s:key_e],
                        full_document=raw[full_s:full_e] if full_s >= 0 else None)


def _decode_raw(raw: bytes) -> ChangeEvent | None:
    fields = _scan(raw)
    if fields is None or b"splitEvent" in fields:
        return None
    op = fields.get(b"operationType")
    if op is None or op[0] != 0x02:
        return None
    kind = _DATA_OPS.get(raw[op[1] + 4:op[2] - 1].decode())
    token = fields.get(b"_id")
    when = fields.get(b"clusterTime")
    ns = fields.get(b"ns")
    key = fields.get(b"documentKey")
    if (kind is None or token is None or token[0] != 0x03 or when is None
            or when[0] != 0x11 or ns is None or ns[0] != 0x03 or key is None
            or key[0] != 0x03):
        return None
    inc, t = _TS.unpack_from(raw, when[1])
    lsid = fields.get(b"lsid")
    number = fields.get(b"txnNumber")
    txn: TxnId | None = None
    if lsid is not None and lsid[0] != 0x0A and number is not None and number[0] != 0x0A:
        if lsid[0] != 0x03 or number[0] not in (0x10, 0x12):
            return None
        n = (_Q64 if number[0] == 0x12 else _I32).unpack_from(raw, number[1])[0]
        txn = TxnId(raw[lsid[1]:lsid[2]], n)
    ns_bytes = raw[ns[1]:ns[2]]
    namespace = _NS_CACHE.get(ns_bytes)
    if namespace is None:
        namespace = _ns(RawBSONDocument(ns_bytes))
    common: dict[str, Any] = {
        "token": raw[token[1]:token[2]], "cluster_time": ClusterTime(t, inc), "txn": txn,
        "ns": namespace, "document_key": raw[key[1]:key[2]]}
    if kind is Delete:
        return Delete(**common)
    full = fields.get(b"fullDocument")
    if full is None or full[0] == 0x0A:
        body = None
    elif full[0] == 0x03:
        body = raw[full[1]:full[2]]
    else:
        return None
    return _BODY_OPS[kind](**common, full_document=body)


def _scan(raw: bytes) -> dict[bytes, tuple[int, int, int]] | None:
    """(type, start, end) of the wanted top-level fields; ``None`` on anything odd."""
    size = len(raw)
    if size < 5 or _I32.unpack_from(raw, 0)[0] != size:
        return None
    found: dict[bytes, tuple[int, int, int]] = {}
    pos = 4
    end = size - 1
    while pos < end:
        kind = raw[pos]
        zero = raw.find(b"\x00", pos + 1)
        if zero < 0:
            return None
        name = raw[pos + 1:zero]
        start = zero + 1
        if kind in _DOCS:
            stop = start + _I32.unpack_from(raw, start)[0]
        elif kind in _SIZED:
            stop = start + 4 + _I32.unpack_from(raw, start)[0]
        elif kind == 0x05:
            stop = start + 5 + _I32.unpack_from(raw, start)[0]
        else:
            width = _FIXED.get(kind)
            if width is None:
                return None
            stop = start + width
        if stop > end or (stop <= start and kind not in (0x0A, 0x06, 0x7F, 0xFF)):
            return None
        if name in _WANTED:
            found[name] = (kind, start, stop)
        pos = stop
    return found if pos == end and raw[end] == 0 else None


def id_document(document_key: bytes) -> bytes:
    """BSON ``{"_id": value}`` cut byte for byte out of a raw ``documentKey`` (the value
    keeps its exact BSON type; shard key fields are left out)."""
    try:
        return id_bson_from_raw(document_key)
    except MappingError as exc:
        raise EventDecodeError("documentKey has no readable '_id'") from exc


def token_cluster_time(token: bytes) -> ClusterTime | None:
    """The cluster time a resume token stands for, when its KeyString says so.

    A MongoDB resume token's ``_data`` is a hex KeyString whose first value is the
    event's cluster time: type byte ``0x82`` then the Timestamp big-endian (``t`` then
    ``i``). Any other shape returns ``None`` (the caller falls back to the reply's
    ``operationTime``).
    """
    try:
        data = RawBSONDocument(token).get("_data")
    except Exception:
        return None
    if isinstance(data, str) and len(data) >= 18 and data[:2].lower() == "82":
        try:
            t = int(data[2:10], 16)
            i = int(data[10:18], 16)
        except ValueError:
            return None
        return ClusterTime(t, i)
    return None


class FragmentAssembler:
    """Joins ``$changeStreamSplitLargeEvent`` fragments back into whole events.

    Feed every raw event in stream order; :meth:`feed` returns the event to decode (the
    input itself when it is not a fragment, the joined event after the last fragment) or
    ``None`` while fragments are outstanding. A fragment sequence that breaks off (a new
    first fragment or a whole event arrives before the last one) is discarded: resuming
    from the last checkpoint delivers it again in full.
    """

    def __init__(self) -> None:
        self._parts: dict[str, Any] = {}
        self._expected = 0
        self._seen = 0

    @property
    def pending(self) -> bool:
        return self._seen > 0

    def reset(self) -> None:
        self._parts = {}
        self._expected = 0
        self._seen = 0

    def feed(self, doc: RawBSONDocument) -> RawBSONDocument | None:
        split = doc.get("splitEvent")
        if split is None:
            self.reset()
            return doc
        fragment = int(split["fragment"])
        of = int(split["of"])
        if fragment == 1 or fragment != self._seen + 1 or of != self._expected:
            self.reset()
            if fragment != 1:
                return None
            self._expected = of
        self._seen = fragment
        for name, value in doc.items():
            if name != "splitEvent":
                self._parts[name] = value  # later fragments' _id (token) wins
        if fragment < of:
            return None
        joined = RawBSONDocument(bson.encode(self._parts))
        self.reset()
        return joined
