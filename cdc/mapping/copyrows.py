"""The batch fast path: raw BSON documents straight to binary COPY streams, in C.

``copy_rows`` of :class:`~cdc.mapping.document.DocumentMapper` and
:class:`~cdc.mapping.columns.ColumnMapper` hand a whole batch to the C extension
(``_copyrows.c``), which writes one PostgreSQL binary COPY stream per table with the
rows ``map_document`` gives, with no Python object per row or value. The extension
writes a document only when it is certain to equal the Python result (same relaxed
Extended JSON writer as document mode's fast path, convert.py's accept rules
re-stated in C); every other document is listed in :attr:`CopyRows.left` for
``map_document``, which dead-letters it or maps it the slow way.

A mapper has no fast path (``copy_rows`` returns None) when the extension is not
built, in canonical JSON, for a column type other than those of :data:`TYPE_CODES`
(numeric, jsonb), or for a path into ``_id`` (the rest never holds ``_id``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cdc.errors import InvariantError
from cdc.mapping.model import CopyRows

TYPE_CODES = {"text": 0, "objectid": 1, "bigint": 2, "integer": 3, "double precision": 4,
              "boolean": 5, "timestamptz": 6, "uuid": 7, "bytea": 8}
"""Mapping types the C extension converts, and their codes there (``_copyrows.c``)."""

_MAX_PARTS, _MAX_LIFTS, _MAX_CHILDREN = 16, 64, 16

LiftSpec = tuple[tuple[bytes, ...], int]
ChildSpec = tuple[tuple[bytes, ...], tuple[LiftSpec, ...]]
Spec = tuple[tuple[LiftSpec, ...] | None, tuple[ChildSpec, ...]]
"""What the extension needs of a mapper: root lifts (None: document mode), children."""

_CopyRowsC = Callable[
    [Sequence[bytes], Sequence[int], Sequence[bool] | None, Sequence[int] | None,
     tuple[LiftSpec, ...] | None, tuple[ChildSpec, ...]],
    tuple[bytes, tuple[bytes, ...], list[bytes], list[int]]]

_copy_rows_c: _CopyRowsC | None
try:
    from cdc.mapping._fastejson import copy_rows as _copy_rows_c
except ImportError:  # extension not built: no fast path
    _copy_rows_c = None

DOCUMENT_MODE: Spec | None = None if _copy_rows_c is None else (None, ())


def _path(path: str) -> tuple[bytes, ...] | None:
    parts = path.split(".")
    if len(parts) > _MAX_PARTS or parts[0] == "_id":
        return None
    try:
        return tuple(part.encode("utf-8") for part in parts)
    except UnicodeEncodeError:
        return None


def lift_specs(lifts: Sequence[tuple[str, str]]) -> tuple[LiftSpec, ...] | None:
    """The extension's form of ``(path, mapping type)`` pairs; None if it cannot."""
    out = []
    for path, mapping_type in lifts:
        parts = _path(path)
        code = TYPE_CODES.get(mapping_type)
        if parts is None or code is None:
            return None
        out.append((parts, code))
    return tuple(out) if len(out) <= _MAX_LIFTS else None


def column_spec(root: Sequence[tuple[str, str]],
                children: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> Spec | None:
    """The spec of a column-mode mapper, or None when it has no fast path."""
    if _copy_rows_c is None or len(children) > _MAX_CHILDREN:
        return None
    lifts = lift_specs(root)
    kids = []
    for path, child_lifts in children:
        parts = _path(path)
        specs = lift_specs(child_lifts)
        if parts is None or specs is None:
            return None
        kids.append((parts, specs))
    return None if lifts is None else (lifts, tuple(kids))


def copy_rows(spec: Spec | None, raws: Sequence[bytes], versions: Sequence[int],
              streams: Sequence[bool] | None, positions: Sequence[int] | None
              ) -> CopyRows | None:
    """The streams of ``raws`` under ``spec`` (see the module docstring)."""
    if spec is None or _copy_rows_c is None:
        return None
    if (streams is None) != (positions is None):
        raise InvariantError("streams and positions go together (the staging form)")
    root, children, keys, left = _copy_rows_c(raws, versions, streams, positions, *spec)
    return CopyRows(root, children, keys, left)
