"""Query and update semantics, borrowed from mongomock where it fits.

Filters are evaluated by ``mongomock.filtering.filter_applies``, projections by
mongomock's projection helpers and update documents / update pipelines by the update
machinery of a scratch ``mongomock.Collection`` (``_apply_update_document`` and
``_apply_update_pipeline`` applied to one decoded document at a time), so the sandbox
does not re-implement MongoDB's query language. What mongomock lacks is added here:
``arrayFilters`` (``$[]`` and ``$[ident]`` paths are expanded to concrete indexes
before mongomock applies the update), ``$inc``, ``$mul`` and ``$bit`` (with MongoDB's
numeric result types: int32 op int32 stays int32 unless it overflows, int64 stays
int64, doubles and decimals win), the ``_id`` range recogniser that lets ``find``
scan a slice of the ordered ``_id`` index instead of every document, BSON-order sorting,
and :func:`diff`, which turns a before/after pair into a change-stream
``updateDescription``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import bson
import mongomock
from bson import _raw_to_dict  # the C decoder's one-level split (RawBSONDocument's own)
from bson.codec_options import CodecOptions
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.raw_bson import RawBSONDocument
from bson.regex import Regex
from mongomock import collection as mm_collection
from mongomock import filtering

from ops.sandbox import bsonraw
from ops.sandbox.bsonkey import SortKey, sort_key
from ops.sandbox.errors import CommandError

Doc = dict[str, Any]
_scratch: Any = None
_filter_applies: Any = filtering.filter_applies
_WriteError: Any = getattr(mongomock, "WriteError", RuntimeError)
_Collection: Any = mm_collection.Collection
_RANGE_OPS = {"$gt", "$gte", "$lt", "$lte", "$eq"}


def _scratch_collection() -> Any:
    global _scratch
    if _scratch is None:
        _scratch = mongomock.MongoClient().db.scratch
    return _scratch


def _wrap(exc: Exception, code: int = 2) -> CommandError:
    if isinstance(exc, CommandError):
        return exc
    return CommandError(code, str(exc) or type(exc).__name__)


def matcher(spec: Doc | None) -> Callable[[Doc], bool] | None:
    """A predicate for ``spec``, or None when it matches everything."""
    if not spec:
        return None

    def match(doc: Doc) -> bool:
        try:
            return bool(_filter_applies(spec, doc))
        except Exception as exc:
            raise _wrap(exc) from exc

    return match


def _plain(value: Any) -> bool:
    return not isinstance(value, dict | list | Regex | Decimal128) and not hasattr(value, "pattern")


def id_range(spec: Doc | None) -> tuple[SortKey | None, bool, SortKey | None, bool] | None:
    """``(low, low inclusive, high, high inclusive)`` if ``spec`` only bounds ``_id``.

    Bounds are sort keys in BSON order, ``None`` meaning open. As on the server,
    comparisons are type-bracketed: ``{$gte: 5}`` matches numbers only, while MinKey and
    MaxKey bounds span every type (the backfill's open chunk ends).
    """
    if not spec:
        return (None, True, None, True)
    if set(spec) != {"_id"}:
        return None
    cond = spec["_id"]
    if _plain(cond):
        k = sort_key(cond)
        return (k, True, k, True)
    if not isinstance(cond, dict) or not cond or not set(cond) <= _RANGE_OPS:
        return None
    low: SortKey | None = None
    high: SortKey | None = None
    low_inc = high_inc = True
    for op, value in cond.items():
        if not _plain(value):
            return None
        k = sort_key(value)
        if not isinstance(value, MinKey | MaxKey):
            # Type bracketing: $gt/$lt only match values of the bound's type class.
            bracket_low, bracket_high = (k[0],), (k[0] + 0.5,)
            if low is None or bracket_low > low:
                low, low_inc = bracket_low, True
            if high is None or bracket_high < high:
                high, high_inc = bracket_high, False
        if op in ("$gt", "$gte", "$eq") and (low is None or k > low or (k == low and op == "$gt")):
            low, low_inc = k, op != "$gt"
        if op in ("$lt", "$lte", "$eq") and (high is None or k < high
                                              or (k == high and op == "$lt")):
            high, high_inc = k, op != "$lt"
    return (low, low_inc, high, high_inc)


def project(doc: Doc, projection: Doc | None) -> Doc:
    if not projection:
        return doc
    try:
        out = _Collection._copy_only_fields(
            _scratch_collection(), doc, dict(projection), dict)
    except Exception as exc:
        raise _wrap(exc) from exc
    return dict(out)


def _resolve(doc: Doc, path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def sort_docs(docs: list[Doc], spec: Doc | None) -> list[Doc]:
    if not spec:
        return docs
    for field, direction in reversed(list(spec.items())):
        docs.sort(key=lambda d, f=field: sort_key(_resolve(d, f)),  # type: ignore[misc]
                  reverse=(direction == -1))
    return docs


def is_replacement(update: Any) -> bool:
    return isinstance(update, dict) and not any(k.startswith("$") for k in update)


def _expand(doc: Any, parts: list[str], filters: dict[str, Doc]) -> list[str]:
    if not parts:
        return [""]
    head, rest = parts[0], parts[1:]
    if head.startswith("$[") and head.endswith("]"):
        if not isinstance(doc, list):
            return []
        ident = head[2:-1]
        out = []
        for i, elem in enumerate(doc):
            if ident and not _filter_applies(filters.get(ident, {}), {ident: elem}):
                continue
            out += [f"{i}" + (f".{tail}" if tail else "") for tail in _expand(elem, rest, filters)]
        return out
    child = doc.get(head) if isinstance(doc, dict) else (
        doc[int(head)] if isinstance(doc, list) and head.isdigit() and int(head) < len(doc)
        else None)
    return [head + (f".{tail}" if tail else "") for tail in _expand(child, rest, filters)]


def _apply_array_filters(doc: Doc, update: Doc, array_filters: list[Doc]) -> Doc:
    filters: dict[str, Doc] = {}
    for f in array_filters:
        for key, value in f.items():
            ident = key.split(".", 1)[0]
            filters.setdefault(ident, {})[key] = value
    out: Doc = {}
    for op, fields in update.items():
        if not isinstance(fields, dict):
            out[op] = fields
            continue
        new: Doc = {}
        for path, value in fields.items():
            if "$[" in path:
                for concrete in _expand(doc, path.split("."), filters):
                    new[concrete] = copy.deepcopy(value)
            else:
                new[path] = value
        out[op] = new
    return out


_INT32 = range(-(2**31), 2**31)


def _numeric(old: Any, result: Any, operand: Any) -> Any:
    """``result`` in the BSON type MongoDB gives arithmetic on ``old`` and ``operand``."""
    if isinstance(old, Decimal128) or isinstance(operand, Decimal128):
        return Decimal128(str(result))
    if isinstance(result, float):
        return result
    if isinstance(old, Int64) or isinstance(operand, Int64) or int(result) not in _INT32:
        return Int64(result)
    return int(result)


def _num(value: Any) -> Any:
    return value.to_decimal() if isinstance(value, Decimal128) else value


def _own_operators(doc: Doc, update: Doc) -> Doc:
    """Apply ``$inc``, ``$mul`` and ``$bit`` (which mongomock lacks or types wrongly: an
    int64 field must stay int64); return the rest of ``update``."""
    rest = {k: v for k, v in update.items() if k not in ("$inc", "$mul", "$bit")}
    for path, delta in (update.get("$inc") or {}).items():
        parent, leaf = _parent(doc, path)
        if leaf not in parent:
            parent[leaf] = delta
            continue
        old = parent[leaf]
        if not isinstance(old, int | float | Decimal128) or isinstance(old, bool):
            raise CommandError(14, f"Cannot apply $inc to a value of non-numeric type at {path}")
        parent[leaf] = _numeric(old, _num(old) + _num(delta), delta)
    for path, factor in (update.get("$mul") or {}).items():
        parent, leaf = _parent(doc, path)
        old = parent.get(leaf, 0) if isinstance(parent, dict) else 0
        if not isinstance(old, int | float | Decimal128) or isinstance(old, bool):
            raise CommandError(14, f"Cannot apply $mul to a value of non-numeric type at {path}")
        parent[leaf] = _numeric(old, _num(old) * _num(factor) if leaf in parent
                                else 0 * _num(factor), factor)
    for path, ops in (update.get("$bit") or {}).items():
        parent, leaf = _parent(doc, path)
        value = parent.get(leaf, 0)
        for op, operand in ops.items():
            bits = {"and": int.__and__, "or": int.__or__, "xor": int.__xor__}.get(op)
            if bits is None or isinstance(value, float | bool) or not isinstance(value, int):
                raise CommandError(2, f"$bit {op} needs an integer field at {path}")
            value = _numeric(value, bits(int(value), int(operand)), operand)
        parent[leaf] = value
    return rest


def _plain_set(doc: Doc, update: Doc) -> Doc:
    """Apply a ``$set`` of top-level field names (no dots, no ``$``) directly, as
    mongomock would (lists copied, new fields appended); return the rest of ``update``.
    Anything else — dotted paths, a field another operator of the update touches too —
    is left to mongomock."""
    fields = update["$set"]
    if not isinstance(fields, dict) or not fields:
        return update
    others = {path.split(".", 1)[0] for op, spec in update.items() if op != "$set"
              and isinstance(spec, dict) for path in spec}
    for name in fields:
        if (not name or "." in name or name[0] == "$" or "\0" in name
                or name in others):
            return update
    for name, value in fields.items():
        doc[name] = copy.deepcopy(value) if isinstance(value, list | tuple) else value
    return {k: v for k, v in update.items() if k != "$set"}


def _parent(doc: Doc, path: str) -> tuple[Any, Any]:
    parts = path.split(".")
    node: Any = doc
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit():
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
    leaf = parts[-1]
    if isinstance(node, list):
        raise CommandError(2, f"cannot address array element by name at {path}")
    return node, leaf


def apply_update(doc: Doc, spec: Doc, update: Any, array_filters: list[Doc] | None,
                 inserting: bool = False, fresh: Doc | None = None) -> Doc:
    """The document after applying ``update`` (operators or pipeline) to ``doc``.

    ``fresh`` is a private copy of ``doc`` the update may modify (e.g. decoded again
    from the stored bytes, which costs a fraction of ``copy.deepcopy``); without one,
    ``doc`` is deep-copied."""
    scratch = _scratch_collection()
    new = fresh if fresh is not None else copy.deepcopy(doc)
    try:
        if isinstance(update, list):
            scratch._apply_update_pipeline(new, update, None)
        else:
            if array_filters or any("$[" in p for f in update.values()
                                    if isinstance(f, dict) for p in f):
                update = _apply_array_filters(new, update, array_filters or [])
            if "$inc" in update or "$mul" in update or "$bit" in update:
                update = _own_operators(new, update)
            if "$set" in update:
                update = _plain_set(new, update)
            if update:
                scratch._apply_update_document(new, spec, update, inserting)
    except CommandError:
        raise
    except _WriteError as exc:
        raise CommandError(exc.code or 2, str(exc)) from exc
    except Exception as exc:
        raise _wrap(exc, 9) from exc
    if "_id" in doc and sort_key(new.get("_id")) != sort_key(doc["_id"]):
        raise CommandError(66, "After applying the update, the (immutable) field '_id' "
                               "was found to have been altered")
    return _id_first(new)


def _id_first(doc: Doc) -> Doc:
    if next(iter(doc), None) == "_id":
        return doc
    return {"_id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}


def upsert_seed(spec: Doc, update: Any) -> Doc:
    """The document an upsert starts from: the filter's equality fields."""
    scratch = _scratch_collection()
    seed: Doc
    if "_id" in spec and _plain(spec["_id"]):
        seed = {"_id": spec["_id"]}
    elif is_replacement(update) and "_id" in update:
        seed = {"_id": update["_id"]}
    else:
        seed = {"_id": bson.ObjectId()}
    if is_replacement(update):
        return seed
    extra = dict(spec)
    extra.pop("_id", None)
    extra = scratch._expand_dots(extra)
    extra, _ = scratch._discard_operators(extra)
    seed.update(extra)
    return seed


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict | list):
        return bson.encode({"v": a}) == bson.encode({"v": b})
    return bool(a == b)


def diff(before: Doc, after: Doc, before_raw: bytes | None = None,
         after_raw: bytes | None = None) -> Doc:
    """``updateDescription`` of the change from ``before`` to ``after``.

    ``disambiguatedPaths`` (shown to ``showExpandedEvents`` streams only) lists, for
    each reported path that contains a dotted or all-digit field name, the path as an
    array of field names (strings) and array indexes (ints), as MongoDB 6.1+ does.
    Given both documents' bytes too, top-level fields whose element bytes are equal
    (same type, same value) are skipped without comparing their decoded values, so the
    cost follows the fields that changed, not the document's size.
    """
    out = _Diff()
    unchanged: set[str] = set()
    if before_raw is not None and after_raw is not None:
        unchanged = _unchanged_fields(before, after, before_raw, after_raw)
    out.doc(before, after, (), unchanged)
    return {"updatedFields": out.updated, "removedFields": out.removed,
            "truncatedArrays": out.truncated, "disambiguatedPaths": out.ambiguous}


_RAW_TOP = CodecOptions(document_class=RawBSONDocument)


def _unchanged_fields(before: Doc, after: Doc, before_raw: bytes, after_raw: bytes
                      ) -> set[str]:
    """Top-level fields whose value is the same before and after.

    The C decoder splits the top level with nested values kept raw (documents as
    ``RawBSONDocument``, arrays as their bytes; a few µs): nested values are the same
    when their bytes are, scalars when :func:`_same` would say so (same type, equal).
    A document the C decoder refuses (e.g. a date out of Python's range) is split by
    :func:`bsonraw.elements` instead."""
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    try:
        _raw_to_dict(before_raw, 4, len(before_raw) - 1, _RAW_TOP, old, True)
        _raw_to_dict(after_raw, 4, len(after_raw) - 1, _RAW_TOP, new, True)
    except Exception:
        try:
            old_el, new_el = bsonraw.elements(before_raw), bsonraw.elements(after_raw)
        except ValueError:
            return set()
        return {k for k, v in new_el.items() if old_el.get(k) == v}
    same: set[str] = set()
    for k, v in new.items():
        if k not in old:
            continue
        was = old[k]
        kind = type(v)
        if kind is not type(was):
            continue
        if kind is RawBSONDocument:
            if was.raw == v.raw:
                same.add(k)
        elif kind is bytes:
            if v == was and isinstance(before.get(k), list) and isinstance(after.get(k), list):
                same.add(k)  # arrays: a binary value decodes to bytes too, hence the check
        elif v == was:
            same.add(k)  # a scalar: the test :func:`_same` makes (same type, equal)
    return same


class _Diff:
    def __init__(self) -> None:
        self.updated: Doc = {}
        self.removed: list[str] = []
        self.truncated: list[Doc] = []
        self.ambiguous: Doc = {}

    def _path(self, parts: tuple[str | int, ...]) -> str:
        path = ".".join(str(p) for p in parts)
        if any(isinstance(p, str) and (p.isdigit() or "." in p) for p in parts):
            self.ambiguous[path] = list(parts)
        return path

    def doc(self, before: Doc, after: Doc, parts: tuple[str | int, ...],
            unchanged: set[str] | frozenset[str] = frozenset()) -> None:
        for key in before:
            if key not in after:
                self.removed.append(self._path((*parts, key)))
        for key, value in after.items():
            if key in unchanged:
                continue
            if key not in before:
                self.updated[self._path((*parts, key))] = value
            else:
                self.value(before[key], value, (*parts, key))

    def value(self, old: Any, new: Any, parts: tuple[str | int, ...]) -> None:
        if _same(old, new):
            return
        if isinstance(old, dict) and isinstance(new, dict):
            self.doc(old, new, parts)
        elif isinstance(old, list) and isinstance(new, list):
            if len(new) < len(old):
                self.truncated.append({"field": self._path(parts), "newSize": len(new)})
            for i, item in enumerate(new):
                if i < len(old):
                    self.value(old[i], item, (*parts, i))
                else:
                    self.updated[self._path((*parts, i))] = item
        else:
            self.updated[self._path(parts)] = new
