"""copy_rows writes, for every document it does not leave to Python, exactly the rows
map_document gives (read back from the binary COPY streams here, field by field), in
both modes; keys equal keys.py's encoding; damaged BSON never crashes it."""

from __future__ import annotations

import datetime
import random
import struct
import uuid
from collections.abc import Sequence
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from cdc.errors import MappingError
from cdc.mapping import ChildRule, ColumnRule, MappingConfig, MappingRule, resolve
from cdc.mapping.columns import ColumnMapper
from cdc.mapping.document import DocumentMapper
from cdc.mapping.keys import encode_key_value
from cdc.mapping.model import CopyRows, Mapper, TableShape
from tests.unit.bson_strategies import PROPERTY, documents, int32s, int64s, values

FastMapper = DocumentMapper | ColumnMapper

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_PG_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


def _field(pg_type: str, data: bytes) -> Any:
    if pg_type == "bytea":
        return data
    if pg_type == "text":
        return data.decode("utf-8")
    if pg_type == "jsonb":
        assert data[:1] == b"\x01"
        return data[1:].decode("utf-8")
    if pg_type == "bigint":
        return struct.unpack(">q", data)[0]
    if pg_type == "integer":
        return struct.unpack(">i", data)[0]
    if pg_type == "double precision":
        return ("float", data)  # compared bit for bit (NaN, -0.0)
    if pg_type == "boolean":
        assert data in (b"\x00", b"\x01")
        return data == b"\x01"
    if pg_type == "timestamptz":
        (us,) = struct.unpack(">q", data)
        if us == -(2**63):  # -infinity: asyncpg's encoding of datetime.min
            return datetime.datetime(1, 1, 1, tzinfo=datetime.UTC)
        return _PG_EPOCH + datetime.timedelta(microseconds=us)
    if pg_type == "uuid":
        return uuid.UUID(bytes=data)
    raise AssertionError(pg_type)


def parse_copy(stream: bytes, types: Sequence[str]) -> list[tuple[Any, ...]]:
    """The tuples of a binary COPY stream whose fields have ``types``."""
    assert stream[:19] == HEADER
    assert stream[-2:] == b"\xff\xff"
    pos, end, rows = 19, len(stream) - 2, []
    while pos < end:
        (count,) = struct.unpack_from(">h", stream, pos)
        assert count == len(types)
        pos += 2
        row: list[Any] = []
        for pg_type in types:
            (n,) = struct.unpack_from(">i", stream, pos)
            pos += 4
            if n < 0:
                row.append(None)
                continue
            row.append(_field(pg_type, stream[pos:pos + n]))
            pos += n
        rows.append(tuple(row))
    assert pos == end
    return rows


def _normal(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(("float", struct.pack(">d", v)) if type(v) is float else v for v in row)


def root_types(shape: TableShape, staging: bool) -> list[str]:
    extra = ["bigint", "boolean", "integer"] if staging else ["bigint"]
    return [c.pg_type for c in shape.columns] + extra


def child_types(shape: TableShape) -> list[str]:
    return [c.pg_type for c in shape.columns] + ["bigint"]


def fast(mapper: Mapper) -> FastMapper:
    assert isinstance(mapper, DocumentMapper | ColumnMapper)
    return mapper


def check_batch(mapper: FastMapper, raws: list[bytes], staging: bool = False) -> CopyRows:
    """Run copy_rows and assert its streams equal the Python path for every document
    it wrote; returns the result."""
    versions = [1000 + i for i in range(len(raws))]
    streams = [i % 2 == 0 for i in range(len(raws))] if staging else None
    positions = [i * 7 - 3 for i in range(len(raws))] if staging else None
    result = mapper.copy_rows(raws, versions, streams, positions)
    assert isinstance(result, CopyRows)
    left = set(result.left)
    assert result.left == sorted(left)
    shapes = mapper.tables()
    want_root: list[tuple[Any, ...]] = []
    want_children: list[list[tuple[Any, ...]]] = [[] for _ in shapes[1:]]
    keys = []
    for i, raw in enumerate(raws):
        if i in left:
            continue
        mapped = mapper.map_document(raw)  # must not raise: C wrote it
        keys.append(mapped.key)
        extra: tuple[Any, ...] = (versions[i],)
        if streams is not None and positions is not None:
            extra += (streams[i], positions[i])
        (root,) = mapped.rows[shapes[0].name]
        want_root.append(_normal((*root, *extra)))
        for rows, shape in zip(want_children, shapes[1:], strict=True):
            rows += [_normal((*row, versions[i])) for row in mapped.rows[shape.name]]
    assert result.keys == keys
    assert parse_copy(result.root, root_types(shapes[0], staging)) == want_root
    assert len(result.children) == len(shapes) - 1
    for stream, shape, rows in zip(result.children, shapes[1:], want_children, strict=True):
        assert parse_copy(stream, child_types(shape)) == rows
    return result


DOCUMENT = fast(resolve(MappingConfig(), "db.docs"))
COLUMN_RULE = MappingRule(
    "db.cols", mode="column",
    columns=(ColumnRule("s", "text"), ColumnRule("o", "objectid"), ColumnRule("n", "bigint"),
             ColumnRule("i", "integer"), ColumnRule("d", "double precision"),
             ColumnRule("b", "boolean"), ColumnRule("t", "timestamptz"),
             ColumnRule("u", "uuid"), ColumnRule("y", "bytea"), ColumnRule("a.s", "text"),
             ColumnRule("a.x.n", "bigint")),
    children=(ChildRule("items", "items", (ColumnRule("s", "text"), ColumnRule("n", "bigint"),
                                           ColumnRule("x.d", "double precision"))),
              ChildRule("c.z", "zs", (ColumnRule("i", "integer"),
                                      ColumnRule("t", "timestamptz"))),
              ChildRule("z", "plain", ())),
)
COLUMN = fast(resolve(MappingConfig(rules=(COLUMN_RULE,)), "db.cols"))

ID_EDGES: list[Any] = [
    0, 1, -1, 9, 10, 100, 101, -100, 2**31 - 1, -(2**31), Int64(0), Int64(1), Int64(-1),
    Int64(2**63 - 1), Int64(-(2**63)), Int64(-(2**63) + 1), Int64(10**18), Int64(-(10**18)),
    Int64(1234567890123456789), "", "a", "é", "\U0001f600x", "abc def", ObjectId(),
]


def edge_documents() -> list[dict[str, Any]]:
    oid = ObjectId(b"\x01" * 12)
    docs: list[dict[str, Any]] = [
        {"_id": 1, "s": "x", "o": oid, "n": 5, "i": Int64(7), "d": 1.5, "b": True,
         "t": DatetimeMS(0), "u": Binary(b"u" * 16, 4), "y": Binary(b"\x00\x01", 0),
         "a": {"s": "in a", "x": {"n": Int64(-3), "m": 1}, "k": 2},
         "items": [{"s": "one", "n": 1, "x": {"d": 2.5}}, 7, None, [1], {"q": 1}],
         "c": {"z": [{"i": 3, "t": DatetimeMS(-62_135_596_800_000)}], "w": 1},
         "z": ["p", {"s": 1}]},
        {"_id": 2, "s": None, "n": None, "a": {"s": None}, "items": [], "c": {"z": []}},
        {"_id": 3, "items": "not an array", "c": 5, "a": [1, 2], "z": {}},
        {"_id": 4, "d": float("nan")}, {"_id": 5, "d": -0.0}, {"_id": 6, "d": float("inf")},
        {"_id": 7, "d": 1e300, "e": -0.0, "f": float("-inf")},
        {"_id": 8, "t": DatetimeMS(253_402_300_799_999)},
        {"_id": 9, "t": DatetimeMS(253_402_300_800_000)},  # year 10000: left
        {"_id": 10, "t": DatetimeMS(-62_135_596_800_001)},  # year 0: left
        {"_id": 11, "i": Int64(2**31)}, {"_id": 12, "i": Int64(-(2**31))},
        {"_id": 13, "n": 1.0}, {"_id": 14, "d": 1}, {"_id": 15, "b": 1},
        {"_id": 16, "s": "a\x00b"}, {"_id": 17, "s": 5}, {"_id": 18, "o": "x"},
        {"_id": 19, "u": Binary(b"u" * 15, 4)}, {"_id": 20, "u": Binary(b"u" * 16, 3)},
        {"_id": 21, "y": Binary(b"abc", 5)}, {"_id": 22, "y": b""},
        {"_id": 23, "items": [{"n": "bad"}]}, {"_id": 24, "c": {"z": [{"i": 2**31 - 1},
                                                                      {"i": Int64(2**40)}]}},
        {"_id": 25, "x": Decimal128("1.5")}, {"_id": 26, "x": Code("f")},
        {"_id": 27, "x": Regex("a+", "i"), "ts": Timestamp(1, 2), "k": [MinKey(), MaxKey()]},
        {"_id": 28, "$x": 1}, {"_id": 29.5}, {"_id": None}, {"_id": {"a": 1}}, {"x": 1},
        {"_id": "a\x00"}, {"_id": Int64(2**63 - 1), "é": "ü"},
        {"_id": 30, "a": {"x": {"n": 1, "o": 2}, "s": "v"}},
    ]
    return docs + [{"_id": value, "v": 1} for value in ID_EDGES]


@pytest.mark.parametrize("staging", [False, True])
@pytest.mark.parametrize("mapper", [DOCUMENT, COLUMN], ids=["document", "column"])
def test_copy_rows_equals_map_document_on_edge_cases(mapper: FastMapper, staging: bool) -> None:
    raws = [bson.encode(doc) for doc in edge_documents()]
    result = check_batch(mapper, raws, staging)
    # Integer, string and ObjectId _ids are the fast path's: none of these is left.
    ids = len(ID_EDGES)
    assert not set(result.left) & set(range(len(raws) - ids, len(raws)))
    assert 0 not in result.left and 1 not in result.left


def test_column_copy_rows_leaves_rejected_values_to_python() -> None:
    docs = edge_documents()
    raws = [bson.encode(doc) for doc in docs]
    result = check_batch(COLUMN, raws)
    by_id = {doc["_id"]: i for i, doc in enumerate(docs[:-len(ID_EDGES)])
             if type(doc.get("_id")) is int}
    for rejected in (9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 21, 23, 24):
        i = by_id[rejected]
        assert i in result.left
        with pytest.raises(MappingError):
            COLUMN.map_document(raws[i])
    for accepted in (1, 2, 3, 4, 5, 6, 8, 12, 20, 22, 30):
        assert by_id[accepted] not in result.left


@pytest.mark.parametrize("value", ID_EDGES[:-1])
def test_copy_rows_key_is_keys_encoding_of_the_id(value: Any) -> None:
    result = DOCUMENT.copy_rows([bson.encode({"_id": value})], [1])
    assert result is not None and result.left == []
    assert result.keys == [encode_key_value(value)]


@given(st.lists(int32s | int64s | st.text(alphabet=st.characters(
    codec="utf-8", exclude_characters="\x00")), min_size=1, max_size=20))
@PROPERTY
def test_copy_rows_keys_equal_encode_key_value(ids: list[Any]) -> None:
    raws = [bson.encode({"_id": value}) for value in ids]
    for mapper in (DOCUMENT, COLUMN):
        result = check_batch(mapper, raws)
        assert result.left == []
        assert result.keys == [encode_key_value(value) for value in ids]


_names = st.sampled_from(["s", "o", "n", "i", "d", "b", "t", "u", "y", "a", "x", "items",
                          "c", "z", "q"])
_typed = (st.text(max_size=3) | st.integers(-(2**31), 2**31 - 1) | st.floats()
          | st.booleans() | st.none() | st.builds(ObjectId)
          | st.integers(-(2**50), 2**50).map(DatetimeMS)
          | st.builds(Binary, st.binary(min_size=16, max_size=16), st.sampled_from([0, 3, 4])))
_trees = st.recursive(
    st.one_of(_typed, _typed, _typed, values),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_names, inner, max_size=4),
    max_leaves=10)
_ids = int32s | int64s | st.text(max_size=3) | st.builds(ObjectId) | st.floats()
_fast_documents = st.builds(lambda i, rest: {"_id": i, **rest}, _ids,
                            st.dictionaries(_names, _trees, max_size=8))


def _maybe(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value the column takes, sometimes null or anything at all."""
    return st.integers(0, 9).flatmap(lambda k: st.none() if k == 0 else _trees if k == 1
                                     else right)


def _optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={k: _maybe(v) for k, v in fields.items()})


_dates = st.integers(-62_135_596_800_010, 253_402_300_800_010).map(DatetimeMS) | st.sampled_from(
    [DatetimeMS(-62_135_596_800_000), DatetimeMS(-62_135_596_800_001),
     DatetimeMS(253_402_300_799_999), DatetimeMS(253_402_300_800_000)])
_ints = int32s | int32s.map(Int64) | st.sampled_from(
    [Int64(2**31), Int64(-(2**31) - 1), Int64(2**63 - 1), Int64(-(2**63))])
_items = st.lists(_optional(s=st.text(max_size=3), n=_ints, x=_optional(d=st.floats()),
                            q=_trees) | _trees, max_size=3)
_column_documents = st.builds(
    lambda i, typed, rest: {"_id": i, **typed, **rest}, _ids,
    _optional(s=st.text(max_size=3), o=st.builds(ObjectId), n=_ints, i=_ints,
              d=st.floats(), b=st.booleans(), t=_dates,
              u=st.builds(Binary, st.binary(min_size=16, max_size=16), st.sampled_from([3, 4])),
              y=st.builds(Binary, st.binary(max_size=3), st.sampled_from([0, 0, 2, 5])),
              a=_optional(s=st.text(max_size=3), x=_optional(n=_ints), k=_trees),
              items=_items, c=_optional(z=st.lists(_optional(i=_ints, t=_dates), max_size=3)),
              z=st.lists(_trees, max_size=3)),
    st.dictionaries(st.sampled_from(["q", "x", "r"]), _trees, max_size=3))


@given(st.lists(_column_documents, max_size=8))
@PROPERTY
def test_column_copy_rows_equals_map_document(docs: list[dict[str, Any]]) -> None:
    check_batch(COLUMN, [bson.encode(doc) for doc in docs], staging=True)


@given(st.lists(documents() | _fast_documents, max_size=8))
@PROPERTY
def test_document_copy_rows_equals_map_document(docs: list[dict[str, Any]]) -> None:
    check_batch(DOCUMENT, [bson.encode(doc) for doc in docs])


def test_copy_rows_writes_ordinary_documents_without_python() -> None:
    rng = random.Random(5)
    raws = [bson.encode({"_id": i, "s": f"s{i}", "n": rng.randint(0, 99), "d": rng.random(),
                         "t": datetime.datetime(2024, 1, 1) + datetime.timedelta(seconds=i),
                         "a": {"s": "x", "k": "é"},
                         "items": [{"s": "k", "n": j, "p": 1.25} for j in range(3)]})
            for i in range(-50, 50)]
    for mapper in (DOCUMENT, COLUMN):
        assert check_batch(mapper, raws).left == []


def _damaged(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    kind = rng.randrange(4)
    if kind == 0:
        data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:
        del data[rng.randrange(4, len(data)):]
        data[:4] = struct.pack("<i", len(data))
    elif kind == 2:
        at = rng.randrange(len(data) - 4)
        data[at:at + 4] = struct.pack("<i", rng.choice([-1, 0, 4, 5, 2**31 - 1, rng.randrange(64)]))
    else:
        data.insert(rng.randrange(4, len(data)), rng.randrange(256))
        data[:4] = struct.pack("<i", len(data))
    return bytes(data)


@pytest.mark.parametrize("mapper", [DOCUMENT, COLUMN], ids=["document", "column"])
def test_copy_rows_survives_damaged_bson(mapper: FastMapper) -> None:
    rng = random.Random(11)
    sources = [bson.encode(doc) for doc in edge_documents()[:8]]
    for _ in range(40):
        raws = [_damaged(rng.choice(sources), rng) for _ in range(50)]
        raws += [b"", b"\x05\x00\x00\x00", b"\x05\x00\x00\x00\x01"]
        result = check_batch(mapper, raws)
        assert {len(raws) - 3, len(raws) - 2, len(raws) - 1} <= set(result.left)


def test_copy_rows_returns_none_without_a_fast_path() -> None:
    canonical = fast(resolve(MappingConfig(json="canonical"), "db.docs"))
    assert canonical.copy_rows([], []) is None
    numeric = fast(resolve(MappingConfig(rules=(MappingRule(
        "db.n", mode="column", columns=(ColumnRule("v", "numeric"),)),)), "db.n"))
    assert numeric.copy_rows([], []) is None
    into_id = fast(resolve(MappingConfig(rules=(MappingRule(
        "db.i", mode="column", columns=(ColumnRule("_id.k", "text"),)),)), "db.i"))
    assert into_id.copy_rows([], []) is None


def test_copy_rows_of_no_documents_is_empty_streams() -> None:
    result = COLUMN.copy_rows([], [])
    assert result == CopyRows(HEADER + b"\xff\xff", (HEADER + b"\xff\xff",) * 3, [], [])


def _raw(elements: bytes) -> bytes:
    """A raw document ``{_id: 7, <elements>}`` (for types bson.encode cannot write)."""
    body = b"\x10_id\x00" + struct.pack("<i", 7) + elements + b"\x00"
    return struct.pack("<i", len(body) + 4) + body


_SYMBOL = b"\x0e%s\x00" + struct.pack("<i", 2) + b"x\x00"
_UNDEFINED = b"\x06%s\x00"
_DBPOINTER = b"\x0c%s\x00" + struct.pack("<i", 2) + b"c\x00" + b"\x01" * 12
_BAD_BOOL = b"\x08%s\x00\x02"


@pytest.mark.parametrize("mapper", [DOCUMENT, COLUMN], ids=["document", "column"])
@pytest.mark.parametrize("element", [_SYMBOL, _UNDEFINED, _DBPOINTER, _BAD_BOOL],
                         ids=["symbol", "undefined", "dbpointer", "bool-2"])
def test_copy_rows_leaves_rare_bson_types_to_python(mapper: FastMapper, element: bytes
                                                   ) -> None:
    # At a lifted path (s: text, b: boolean), elsewhere, and inside a child element.
    raws = [_raw(element % name) for name in (b"s", b"b", b"q")]
    items = b"\x04items\x00" + _doc(b"\x030\x00" + _doc(element % b"s"))
    raws.append(_raw(items))
    result = check_batch(mapper, raws)
    assert result.left == [0, 1, 2, 3]


def _doc(elements: bytes) -> bytes:
    return struct.pack("<i", len(elements) + 5) + elements + b"\x00"
