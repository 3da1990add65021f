"""A random, seeded write workload against MongoDB (pymongo's async API).

Inserts, updates with many operators, replacements, deletes and multi-document
transactions over a small key space, so the same documents are touched again and again
(the cases where ordering, coalescing and version guards matter).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from bson.int64 import Int64
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure


def _value(rng: random.Random) -> Any:
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randrange(-1000, 1000)
    if kind == 1:
        return Int64(rng.randrange(1 << 40))
    if kind == 2:
        return rng.random() * 100
    if kind == 3:
        return "".join(rng.choice("abcxyz") for _ in range(rng.randrange(1, 8)))
    if kind == 4:
        return [rng.randrange(10) for _ in range(rng.randrange(4))]
    if kind == 5:
        return {"x": rng.randrange(10), "y": "s" + str(rng.randrange(10))}
    return None


def random_doc(rng: random.Random, key: int) -> dict[str, Any]:
    return {"_id": key, "n": rng.randrange(100), "name": _value(rng), "tags": ["a", "b"],
            "sub": {"x": rng.randrange(10), "y": _value(rng)}}


def random_update(rng: random.Random) -> dict[str, Any]:
    choice = rng.randrange(10)
    if choice == 0:
        return {"$set": {"name": _value(rng), "sub.x": rng.randrange(10)}}
    if choice == 1:
        return {"$unset": {"name": ""}}
    if choice == 2:
        return {"$inc": {"n": rng.randrange(1, 5)}}
    if choice == 3:
        return {"$push": {"tags": "t" + str(rng.randrange(5))}}
    if choice == 4:
        return {"$pull": {"tags": "a"}}
    if choice == 5:
        return {"$addToSet": {"tags": "z"}}
    if choice == 6:
        # $mul would belong here; the sandbox does not implement it yet.
        return {"$currentDate": {"touched": True}, "$rename": {"name": "alias"}}
    if choice == 7:
        return {"$max": {"n": rng.randrange(200)}, "$min": {"sub.x": rng.randrange(5)}}
    if choice == 8:
        return {"$pop": {"tags": 1}}
    return {"$set": {"sub": {"x": rng.randrange(3), "deep": {"k": _value(rng)}}}}


async def _one_op(rng: random.Random, coll: AsyncCollection[Any], keys: int,
                  session: Any = None) -> None:
    key = rng.randrange(keys)
    op = rng.randrange(10)
    if op < 3:
        await coll.replace_one({"_id": key}, random_doc(rng, key), upsert=True,
                               session=session)
    elif op < 7:
        await coll.update_one({"_id": key}, random_update(rng), session=session)
    elif op < 8:
        await coll.update_many({"_id": {"$gte": key, "$lt": key + 3}}, {"$inc": {"n": 1}},
                               session=session)
    else:
        await coll.delete_one({"_id": key}, session=session)


async def run_workload(client: AsyncMongoClient[Any], namespaces: Sequence[str], *,
                       ops: int, seed: int, keys: int = 50, txn_every: int = 15) -> int:
    """Run ``ops`` random operations; every ``txn_every``-th is a 2–5 op transaction."""
    rng = random.Random(seed)
    colls = [client[ns.split(".", 1)[0]][ns.split(".", 1)[1]] for ns in namespaces]
    done = 0
    while done < ops:
        coll = rng.choice(colls)
        if txn_every and rng.randrange(txn_every) == 0:
            async with client.start_session() as session:
                try:
                    async with await session.start_transaction():
                        for _ in range(rng.randrange(2, 6)):
                            await _one_op(rng, rng.choice(colls), keys, session)
                except OperationFailure:
                    pass  # write conflict: the transaction aborted, nothing applied
        else:
            await _one_op(rng, coll, keys)
        done += 1
    return done
