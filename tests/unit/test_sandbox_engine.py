"""Sandbox update semantics on the fast paths: plain ``$set`` and the byte-level diff."""

from __future__ import annotations

from typing import Any

import bson
from bson.binary import Binary

from ops.sandbox import engine
from ops.sandbox.wire import CODEC


def updated(before: dict[str, Any], update: dict[str, Any]) -> tuple[dict[str, Any],
                                                                     dict[str, Any]]:
    raw = bson.encode(before)
    doc = bson.decode(raw, CODEC)
    new = engine.apply_update(doc, {}, update, None, fresh=bson.decode(raw, CODEC))
    return new, engine.diff(doc, new, raw, bson.encode(new))


def test_plain_set_replaces_in_place_and_appends_new_fields_last() -> None:
    new, desc = updated({"_id": 1, "a": 1, "b": [1, 2]}, {"$set": {"a": 2, "z": [3]}})
    assert list(new) == ["_id", "a", "b", "z"]
    assert new == {"_id": 1, "a": 2, "b": [1, 2], "z": [3]}
    assert desc["updatedFields"] == {"a": 2, "z": [3]}
    assert desc["removedFields"] == []


def test_set_of_a_dotted_path_still_creates_the_nested_document() -> None:
    new, desc = updated({"_id": 1, "a": {"x": 1}}, {"$set": {"a.y": 2}})
    assert new["a"] == {"x": 1, "y": 2}
    assert desc["updatedFields"] == {"a.y": 2}


def test_fresh_copy_leaves_the_matched_document_untouched() -> None:
    raw = bson.encode({"_id": 1, "a": [1]})
    doc = bson.decode(raw, CODEC)
    engine.apply_update(doc, {}, {"$set": {"a": [2]}, "$inc": {"n": 1}}, None,
                        fresh=bson.decode(raw, CODEC))
    assert doc == {"_id": 1, "a": [1]}


def test_diff_reports_a_numeric_type_change_with_an_equal_value() -> None:
    _, desc = updated({"_id": 1, "a": 1, "b": "s"}, {"$set": {"a": 1.0}})
    assert desc["updatedFields"] == {"a": 1.0}


def test_diff_reports_an_array_replaced_by_a_binary_of_the_same_bytes() -> None:
    before = {"_id": 1, "a": [1]}
    array_bytes = bson.encode({"a": [1]})[4 + 3:-1]  # the array's own bytes
    _, desc = updated(before, {"$set": {"a": Binary(array_bytes)}})
    assert list(desc["updatedFields"]) == ["a"]


def test_diff_skips_unchanged_nested_documents_and_reports_changed_ones() -> None:
    before = {"_id": 1, "c": {"n": 1}, "d": {"n": 1}, "t": [1, 2]}
    _, desc = updated(before, {"$set": {"d": {"n": 2}}})
    assert desc["updatedFields"] == {"d.n": 2}
