"""Pre- and post-images, and events too large for one BSON document."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.database import Database
from pymongo.errors import OperationFailure

from tests.conformance.streams import take

Db = Database[dict[str, Any]]


def test_pre_and_post_images_when_enabled(db: Db) -> None:
    db.create_collection("c", changeStreamPreAndPostImages={"enabled": True})
    db.c.insert_one({"_id": 1, "v": 1})
    with db.c.watch(full_document="required", full_document_before_change="required",
                    max_await_time_ms=100) as stream:
        db.c.update_one({"_id": 1}, {"$set": {"v": 2}})
        db.c.replace_one({"_id": 1}, {"v": 3})
        db.c.delete_one({"_id": 1})
        update, replace, delete = take(stream, 3)
    assert update["fullDocumentBeforeChange"] == {"_id": 1, "v": 1}
    assert update["fullDocument"] == {"_id": 1, "v": 2}
    assert replace["fullDocumentBeforeChange"] == {"_id": 1, "v": 2}
    assert replace["fullDocument"] == {"_id": 1, "v": 3}
    assert delete["fullDocumentBeforeChange"] == {"_id": 1, "v": 3}
    assert "fullDocument" not in delete


def test_when_available_gives_null_without_images(db: Db) -> None:
    db.c.insert_one({"_id": 1, "v": 1})
    with db.c.watch(full_document="whenAvailable", full_document_before_change="whenAvailable",
                    max_await_time_ms=100) as stream:
        db.c.update_one({"_id": 1}, {"$set": {"v": 2}})
        (update,) = take(stream, 1)
    assert update["fullDocument"] is None and update["fullDocumentBeforeChange"] is None


def test_required_pre_image_missing_is_an_error(db: Db) -> None:
    db.c.insert_one({"_id": 1, "v": 1})
    with db.c.watch(full_document_before_change="required", max_await_time_ms=100) as stream:
        db.c.update_one({"_id": 1}, {"$set": {"v": 2}})
        with pytest.raises(OperationFailure):
            take(stream, 1)


def test_update_lookup_returns_the_current_document(db: Db) -> None:
    db.c.insert_one({"_id": 1, "v": 1})
    with db.c.watch(full_document="updateLookup", max_await_time_ms=100) as stream:
        db.c.update_one({"_id": 1}, {"$set": {"v": 2}})
        db.c.update_one({"_id": 1}, {"$set": {"v": 3}})
        first, second = take(stream, 2)
    # the lookup happens when the event is read: both see the latest version
    assert first["fullDocument"] == {"_id": 1, "v": 3} == second["fullDocument"]


def test_images_enabled_later_with_coll_mod(db: Db) -> None:
    db.c.insert_one({"_id": 1, "v": 1})
    db.command("collMod", "c", changeStreamPreAndPostImages={"enabled": True})
    with db.c.watch(full_document_before_change="required", max_await_time_ms=100) as stream:
        db.c.delete_one({"_id": 1})
        (delete,) = take(stream, 1)
    assert delete["fullDocumentBeforeChange"] == {"_id": 1, "v": 1}


def _big_update(db: Db) -> None:
    db.create_collection("c", changeStreamPreAndPostImages={"enabled": True})
    db.c.insert_one({"_id": 1, "big": "a" * (9 * 1024 * 1024)})


def test_event_over_16_mib_fails_without_split_stage(db: Db) -> None:
    _big_update(db)
    with db.c.watch(full_document="required", full_document_before_change="required",
                    max_await_time_ms=100) as stream:
        db.c.update_one({"_id": 1}, {"$set": {"big": "b" * (9 * 1024 * 1024)}})
        with pytest.raises(OperationFailure) as info:
            take(stream, 1)
    assert info.value.code == 10334


def test_split_large_event_yields_fragments_with_their_own_tokens(db: Db) -> None:
    _big_update(db)
    pipeline: list[dict[str, Any]] = [{"$changeStreamSplitLargeEvent": {}}]
    options: dict[str, Any] = {"full_document": "required",
                               "full_document_before_change": "required"}
    with db.c.watch(pipeline, max_await_time_ms=100, **options) as stream:
        db.c.update_one({"_id": 1}, {"$set": {"big": "b" * (9 * 1024 * 1024)}})
        fragments = take(stream, 1)
        count = fragments[0]["splitEvent"]["of"]
        fragments += take(stream, count - 1)
    # pre-image, post-image and updatedFields each hold 9 MiB: three fragments
    assert count == 3
    assert [f["splitEvent"] for f in fragments] == [{"fragment": n, "of": count}
                                                     for n in range(1, count + 1)]
    merged: dict[str, Any] = {}
    for fragment in fragments:
        merged.update({k: v for k, v in fragment.items() if k not in ("_id", "splitEvent")})
    assert merged["operationType"] == "update"
    assert merged["fullDocument"]["big"][0] == "b"
    assert merged["fullDocumentBeforeChange"]["big"][0] == "a"
    assert merged["updateDescription"]["updatedFields"]["big"][0] == "b"
    assert len({f["_id"]["_data"] for f in fragments}) == count
    with db.c.watch(pipeline, resume_after=fragments[0]["_id"], max_await_time_ms=100,
                    **options) as resumed:
        again = take(resumed, count - 1)
    assert [f["_id"] for f in again] == [f["_id"] for f in fragments[1:]]
