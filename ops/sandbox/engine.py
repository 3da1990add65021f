"""Query and update semantics, borrowed from mongomock where it fits.

Filters are evaluated by ``mongomock.filtering.filter_applies``, projections by
mongomock's projection helpers and update documents / update pipelines by the update
machinery of a scratch ``mongomock.Collection`` (``_apply_update_document`` and
``_apply_update_pipeline`` applied to one decoded document at a time), so the sandbox
does not re-implement MongoDB's query language. What mongomock lacks is added here:
``arrayFilters`` (``$[]`` and ``$[ident]`` paths are expanded to concrete indexes
before mongomock applies the update), the ``_id`` range recogniser that lets ``find``
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
from bson.decimal128 import Decimal128
from bson.regex import Regex
from mongomock import collection as mm_collection
from mongomock import filtering

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

    Bounds compare in BSON order across types (MongoDB brackets comparisons by type;
    the backfill only uses bounds of the ``_id`` type it is scanning, so the plain BSON
    order is what it expects), ``None`` meaning open.
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


def apply_update(doc: Doc, spec: Doc, update: Any, array_filters: list[Doc] | None,
                 inserting: bool = False) -> Doc:
    """The document after applying ``update`` (operators or pipeline) to ``doc``."""
    scratch = _scratch_collection()
    new = copy.deepcopy(doc)
    try:
        if isinstance(update, list):
            scratch._apply_update_pipeline(new, update, None)
        else:
            if array_filters:
                update = _apply_array_filters(new, update, array_filters)
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


def diff(before: Doc, after: Doc) -> Doc:
    """``updateDescription`` of the change from ``before`` to ``after``."""
    updated: Doc = {}
    removed: list[str] = []
    truncated: list[Doc] = []
    _diff_doc(before, after, "", updated, removed, truncated)
    return {"updatedFields": updated, "removedFields": removed, "truncatedArrays": truncated}


def _diff_doc(before: Doc, after: Doc, prefix: str, updated: Doc, removed: list[str],
              truncated: list[Doc]) -> None:
    for key in before:
        if key not in after:
            removed.append(prefix + key)
    for key, value in after.items():
        path = prefix + key
        if key not in before:
            updated[path] = value
        else:
            _diff_value(before[key], value, path, updated, removed, truncated)


def _diff_value(old: Any, new: Any, path: str, updated: Doc, removed: list[str],
                truncated: list[Doc]) -> None:
    if _same(old, new):
        return
    if isinstance(old, dict) and isinstance(new, dict):
        _diff_doc(old, new, path + ".", updated, removed, truncated)
    elif isinstance(old, list) and isinstance(new, list):
        if len(new) < len(old):
            truncated.append({"field": path, "newSize": len(new)})
        for i, item in enumerate(new):
            if i < len(old):
                _diff_value(old[i], item, f"{path}.{i}", updated, removed, truncated)
            else:
                updated[f"{path}.{i}"] = item
    else:
        updated[path] = new
