"""``$match`` stages a change stream can evaluate on the oplog entry, before any event.

Readers such as the tailer follow ``$changeStream`` with a ``$match`` that looks only
at the event's envelope — ``operationType``, ``ns.db``, ``ns.coll`` (or ``ns`` as a
whole) — to keep the watched namespaces. Every such field is known from the oplog entry
alone, so :func:`compile_match` turns that filter into a plain predicate over
``(operationType, db, coll)`` and the stream skips an entry the filter rejects without
building, encoding or decoding its event, and keeps one without running mongomock.

Only what can be decided exactly is compiled: string equality, ``$eq``/``$ne``,
``$in``/``$nin`` of strings, ``$exists``, and ``$and``/``$or``/``$nor`` of those. Note
``ns.coll`` is missing on ``dropDatabase`` events (equality fails, ``$ne``/``$nin``
match, ``$exists: false`` matches). Anything else (other fields, regexes, ``null``,
non-string values, other operators) returns None and the stage runs through the
general pipeline engine, so a filter's meaning never depends on which path served it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: (operationType, ns.db, ns.coll or None when the event's ``ns`` has no ``coll``)
Envelope = tuple[str, str, str | None]
Predicate = Callable[[Envelope], bool]

_FIELDS = {"operationType": 0, "ns.db": 1, "ns.coll": 2}


def compile_match(stage: dict[str, Any]) -> Predicate | None:
    """A predicate equivalent to the ``$match`` ``stage``, or None if not envelope-only."""
    if list(stage) != ["$match"] or not isinstance(stage["$match"], dict):
        return None
    return _conjunction(stage["$match"])


def _conjunction(query: dict[str, Any]) -> Predicate | None:
    preds: list[Predicate] = []
    for key, value in query.items():
        pred = _clause(key, value)
        if pred is None:
            return None
        preds.append(pred)
    if len(preds) == 1:
        return preds[0]
    return lambda env: all(p(env) for p in preds)


def _clause(key: str, value: Any) -> Predicate | None:
    if key in ("$and", "$or", "$nor"):
        if not isinstance(value, list) or not value:
            return None
        subs: list[Predicate] = []
        for sub in value:
            pred = _conjunction(sub) if isinstance(sub, dict) else None
            if pred is None:
                return None
            subs.append(pred)
        if key == "$and":
            return lambda env: all(p(env) for p in subs)
        if key == "$or":
            return lambda env: any(p(env) for p in subs)
        return lambda env: not any(p(env) for p in subs)
    if key == "ns":
        return _ns_document(value)
    index = _FIELDS.get(key)
    if index is None:
        return None
    if isinstance(value, str):
        return lambda env: env[index] == value
    if not isinstance(value, dict) or not value or not all(k.startswith("$") for k in value):
        return None
    tests: list[Callable[[str | None], bool]] = []
    for op, arg in value.items():
        test = _operator(op, arg)
        if test is None:
            return None
        tests.append(test)
    return lambda env: all(t(env[index]) for t in tests)


def _operator(op: str, arg: Any) -> Callable[[str | None], bool] | None:
    if op in ("$eq", "$ne") and isinstance(arg, str):
        return (lambda v: v == arg) if op == "$eq" else (lambda v: v != arg)
    if op in ("$in", "$nin") and isinstance(arg, list | tuple) \
            and all(isinstance(a, str) for a in arg):
        allowed = frozenset(arg)
        return (lambda v: v in allowed) if op == "$in" else (lambda v: v not in allowed)
    if op == "$exists" and isinstance(arg, bool):
        return (lambda v: v is not None) if arg else (lambda v: v is None)
    return None


def _ns_document(value: Any) -> Predicate | None:
    """``{ns: {db: .., coll: ..}}``: exact document equality, field order included."""
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return None
    keys = list(value)
    if keys == ["db"]:
        db = value["db"]
        return lambda env: env[2] is None and env[1] == db
    if keys == ["db", "coll"]:
        db, coll = value["db"], value["coll"]
        return lambda env: env[1] == db and env[2] == coll
    return None
