"""Fault injection as MongoDB's test suites do it: the ``failCommand`` fail point.

``configureFailPoint: "failCommand"`` takes ``mode`` (``alwaysOn``, ``off``,
``{times: n}`` — the next n matching commands fail — or ``{skip: n}`` — the first n
pass, then every one fails) and ``data``: ``failCommands`` (command names),
``errorCode``, ``errorLabels``, ``closeConnection`` (close the socket without a reply),
``blockConnection`` + ``blockTimeMS`` (stall first, then fail or run),
``writeConcernError`` (run, then attach it) and ``appName`` (only connections whose
handshake named that application). When ``errorLabels`` is absent the server's own
labelling is imitated: ``RetryableWriteError`` for retryable codes on retryable writes
and ``ResumableChangeStreamError`` for resumable codes on change-stream ``getMore``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ops.sandbox.errors import CommandError
from ops.sandbox.registry import Ctx, Reply, command

RETRYABLE_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
RESUMABLE_CODES = RETRYABLE_CODES | {43, 63, 150, 13388, 234, 133}


@dataclass
class FailCommand:
    mode: str                 # alwaysOn | times | skip
    count: int
    data: dict[str, Any] = field(default_factory=dict)


class FailPoints:
    def __init__(self) -> None:
        self.fail_command: FailCommand | None = None

    def take(self, name: str, app_name: str | None) -> dict[str, Any] | None:
        """The ``data`` of the failCommand fail point if it fires for this command."""
        fp = self.fail_command
        if fp is None or name not in (fp.data.get("failCommands") or []):
            return None
        want_app = fp.data.get("appName")
        if want_app is not None and want_app != app_name:
            return None
        if fp.mode == "skip":
            if fp.count > 0:
                fp.count -= 1
                return None
        elif fp.mode == "times":
            fp.count -= 1
            if fp.count <= 0:
                self.fail_command = None
        return fp.data


def error_for(data: dict[str, Any], ctx: Ctx, is_stream_get_more: bool) -> CommandError:
    code = int(data["errorCode"])
    labels = data.get("errorLabels")
    if labels is None:
        labels = []
        if code in RETRYABLE_CODES and "txnNumber" in ctx.body and ctx.txn is None:
            labels.append("RetryableWriteError")
        if code in RESUMABLE_CODES and is_stream_get_more:
            labels.append("ResumableChangeStreamError")
    return CommandError(code, "Failing command via 'failCommand' failpoint", list(labels))


@command("configureFailPoint")
def configure_fail_point(ctx: Ctx) -> Reply:
    name = ctx.body["configureFailPoint"]
    if name != "failCommand":
        raise CommandError(2, f"the sandbox only knows the failCommand fail point, not {name}")
    mode = ctx.body.get("mode")
    data = dict(ctx.body.get("data") or {})
    fps = ctx.sb.failpoints
    if mode == "off":
        fps.fail_command = None
    elif mode == "alwaysOn":
        fps.fail_command = FailCommand("alwaysOn", 0, data)
    elif isinstance(mode, dict) and "times" in mode:
        n = int(mode["times"])
        fps.fail_command = FailCommand("times", n, data) if n > 0 else None
    elif isinstance(mode, dict) and "skip" in mode:
        fps.fail_command = FailCommand("skip", int(mode["skip"]), data)
    else:
        raise CommandError(2, f"unknown fail point mode {mode!r}")
    return {"count": 0, "ok": 1.0}
