"""Errors the sandbox reports to clients in MongoDB's reply shape.

A :class:`CommandError` becomes ``{ok: 0, errmsg, code, codeName, errorLabels}``; the
code names are the server's (``src/mongo/base/error_codes.yml``).
"""

from __future__ import annotations

from typing import Any

CODE_NAMES = {
    2: "BadValue", 9: "FailedToParse", 11: "UserNotFound", 14: "TypeMismatch",
    20: "IllegalOperation", 26: "NamespaceNotFound", 27: "IndexNotFound",
    43: "CursorNotFound", 48: "NamespaceExists", 50: "MaxTimeMSExpired",
    59: "CommandNotFound", 66: "ImmutableField", 72: "InvalidOptions", 85: "IndexOptionsConflict",
    86: "IndexKeySpecsConflict", 89: "NetworkTimeout", 91: "ShutdownInProgress",
    112: "WriteConflict", 189: "PrimarySteppedDown",
    251: "NoSuchTransaction", 256: "TransactionCommitted", 260: "InvalidResumeToken",
    262: "ExceededTimeLimit", 263: "OperationNotSupportedInTransaction",
    280: "ChangeStreamFatalError", 286: "ChangeStreamHistoryLost",
    371: "UserWritesBlocked", 10107: "NotWritablePrimary", 10334: "BSONObjectTooLarge",
    11000: "DuplicateKey", 11600: "InterruptedAtShutdown", 11602: "InterruptedDueToReplStateChange",
    13435: "NotPrimaryNoSecondaryOk", 13436: "NotPrimaryOrSecondary", 6: "HostUnreachable",
    7: "HostNotFound", 40324: "UnknownStage", 40415: "UnknownField", 40573: "InvalidOptions",
    63: "StaleShardVersion", 150: "StaleEpoch", 13388: "StaleConfig", 234: "RetryChangeStream",
    133: "FailedToSatisfyReadPreference", 9001: "SocketException", 175: "QueryPlanKilled",
}


class CommandError(Exception):
    """Raised by a command handler; becomes an ``ok: 0`` reply."""

    def __init__(self, code: int, message: str, labels: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.labels = labels or []

    def reply(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": 0.0, "errmsg": str(self), "code": self.code,
                                "codeName": CODE_NAMES.get(self.code, "UnknownError")}
        if self.labels:
            body["errorLabels"] = list(self.labels)
        return body
