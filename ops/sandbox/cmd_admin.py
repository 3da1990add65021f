"""Handshake and server-level commands.

The sandbox is always the primary of the one-member replica set ``rs0``: ``hello`` and
the legacy ``isMaster`` report ``isWritablePrimary``/``ismaster``, the member list,
``setVersion``, a fixed ``electionId`` and a ``topologyVersion`` whose counter never
changes. A ``hello`` that carries the client's ``topologyVersion`` and
``maxAwaitTimeMS`` is a streaming monitor check: since the topology never changes, the
server answers it after ``maxAwaitTimeMS`` (the server discovery spec's "awaitable
hello"), so idle monitors cost nothing. ``minWireVersion`` 0 / ``maxWireVersion`` 21
(MongoDB 7.0).
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import anyio
from bson.int64 import Int64
from bson.objectid import ObjectId

from ops.sandbox.cmd_read import coll_stats
from ops.sandbox.errors import CommandError
from ops.sandbox.registry import COMMANDS, Ctx, Reply, command
from ops.sandbox.state import SET_NAME, Sandbox

VERSION = "7.0.14"
ELECTION_ID = ObjectId("7fffffff0000000000000001")


def _now() -> datetime.datetime:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def hello_body(sb: Sandbox, legacy: bool, conn_id: int) -> Reply:
    ts = sb.operation_time()
    now = _now()
    body: Reply = {"topologyVersion": {"processId": sb.process_id, "counter": Int64(0)},
                   "hosts": [sb.address], "setName": SET_NAME, "setVersion": 1}
    body["ismaster" if legacy else "isWritablePrimary"] = True
    body.update({
        "secondary": False, "primary": sb.address, "me": sb.address,
        "electionId": ELECTION_ID,
        "lastWrite": {"opTime": {"ts": ts, "t": Int64(1)}, "lastWriteDate": now,
                      "majorityOpTime": {"ts": ts, "t": Int64(1)}, "majorityWriteDate": now},
        "maxBsonObjectSize": 16 * 1024 * 1024, "maxMessageSizeBytes": 48_000_000,
        "maxWriteBatchSize": 100_000, "localTime": now, "logicalSessionTimeoutMinutes": 30,
        "connectionId": conn_id, "minWireVersion": 0, "maxWireVersion": 21,
        "readOnly": False, "ok": 1.0,
    })
    return body


@command("hello", "isMaster", "ismaster")
def hello(ctx: Ctx) -> Any:
    body = ctx.body
    client = body.get("client") or {}
    app = (client.get("application") or {}).get("name")
    if app:
        ctx.conn.app_name = app
    legacy = ctx.name != "hello"
    reply = hello_body(ctx.sb, legacy, ctx.conn.id)
    if body.get("helloOk"):
        reply["helloOk"] = True
    if "topologyVersion" in body and "maxAwaitTimeMS" in body:
        wait = int(body["maxAwaitTimeMS"]) / 1000

        async def later() -> Reply:
            await anyio.sleep(wait)
            return hello_body(ctx.sb, legacy, ctx.conn.id)

        return later()
    return reply


@command("ping")
def ping(ctx: Ctx) -> Reply:
    return {"ok": 1.0}


@command("buildInfo", "buildinfo")
def build_info(ctx: Ctx) -> Reply:
    return {"version": VERSION, "versionArray": [int(p) for p in VERSION.split(".")] + [0],
            "gitVersion": "sandbox", "bits": 64, "maxBsonObjectSize": 16 * 1024 * 1024,
            "storageEngines": ["sandbox"], "javascriptEngine": "none", "debug": False,
            "modules": [], "ok": 1.0}


@command("serverStatus")
def server_status(ctx: Ctx) -> Reply:
    sb = ctx.sb
    return {"host": sb.address, "version": VERSION, "process": "mongod", "pid": Int64(0),
            "uptime": float(int(time.time() - sb.started)),
            "uptimeMillis": Int64(int((time.time() - sb.started) * 1000)),
            "localTime": _now(), "connections": {"current": 0, "available": 1_000_000},
            "repl": hello_body(sb, False, ctx.conn.id),
            "oplog": {"entries": sb.oplog.held, "maxEntries": sb.oplog.max_entries},
            "ok": 1.0}


@command("replSetGetStatus")
def repl_status(ctx: Ctx) -> Reply:
    sb = ctx.sb
    ts = sb.operation_time()
    optime = {"ts": ts, "t": Int64(1)}
    return {"set": SET_NAME, "date": _now(), "myState": 1, "term": Int64(1),
            "members": [{"_id": 0, "name": sb.address, "health": 1.0, "state": 1,
                         "stateStr": "PRIMARY", "optime": optime,
                         "optimeDate": datetime.datetime.fromtimestamp(ts.time, datetime.UTC)
                         .replace(tzinfo=None), "self": True, "electionId": ELECTION_ID}],
            "optimes": {"lastCommittedOpTime": optime, "appliedOpTime": optime,
                        "durableOpTime": optime},
            "ok": 1.0}


@command("listDatabases")
def list_databases(ctx: Ctx) -> Reply:
    dbs = []
    total = 0
    for name, colls in sorted(ctx.sb.store.dbs.items()):
        size = sum(c.data_size for c in colls.values())
        total += size
        dbs.append({"name": name, "sizeOnDisk": Int64(size), "empty": not colls})
    spec = ctx.body.get("filter")
    if spec:
        from ops.sandbox.engine import matcher

        pred = matcher(spec)
        dbs = [d for d in dbs if pred is None or pred(d)]
    if ctx.body.get("nameOnly"):
        return {"databases": [{"name": d["name"]} for d in dbs], "ok": 1.0}
    return {"databases": dbs, "totalSize": Int64(total), "ok": 1.0}


@command("getParameter")
def get_parameter(ctx: Ctx) -> Reply:
    return {"featureCompatibilityVersion": {"version": "7.0"}, "ok": 1.0}


@command("connectionStatus")
def connection_status(ctx: Ctx) -> Reply:
    return {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}, "ok": 1.0}


@command("whatsmyuri")
def whatsmyuri(ctx: Ctx) -> Reply:
    return {"you": ctx.conn.peer, "ok": 1.0}


@command("hostInfo")
def host_info(ctx: Ctx) -> Reply:
    return {"system": {"hostname": ctx.sb.address, "currentTime": _now()}, "ok": 1.0}


@command("dbStats")
def db_stats(ctx: Ctx) -> Reply:
    colls = ctx.sb.store.dbs.get(ctx.db, {})
    size = sum(c.data_size for c in colls.values())
    objects = sum(len(c.docs) for c in colls.values())
    return {"db": ctx.db, "collections": len(colls), "objects": objects, "dataSize": size,
            "storageSize": size, "indexes": sum(len(c.indexes) for c in colls.values()),
            "ok": 1.0}


@command("collStats")
def coll_stats_cmd(ctx: Ctx) -> Reply:
    coll = ctx.collection()
    if coll is None:
        raise CommandError(26, f"ns not found {ctx.ns}")
    return {**coll_stats(coll, ctx.ns), "ok": 1.0}


@command("setUserWriteBlockMode", write=False)
def set_user_write_block_mode(ctx: Ctx) -> Reply:
    if ctx.db != "admin":
        raise CommandError(13, "setUserWriteBlockMode may only be run against the admin db")
    if "global" not in ctx.body:
        raise CommandError(40414, "required field 'global' is missing")
    ctx.sb.write_blocked = bool(ctx.body["global"])
    return {"ok": 1.0}


@command("listCommands")
def list_commands(ctx: Ctx) -> Reply:
    return {"commands": {name: {"help": ""} for name in sorted(COMMANDS)}, "ok": 1.0}
