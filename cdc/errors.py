"""The one error hierarchy of mongo2pg, split by what the caller should do.

::

    Mongo2pgError
    ├── TransientError          retry with backoff, resume from the last checkpoint
    │   ├── SourceUnavailable   MongoDB unreachable, stepping down, cursor lost
    │   └── TargetUnavailable   PostgreSQL connection lost, serialization failure
    ├── DataError               one document is bad: dead-letter it, keep going
    │   └── MappingError        a value cannot be converted under the configured rule
    ├── ConfigError             operator mistake: clear one-line message, exit code 2
    ├── HistoryLostError        the change stream cannot resume: resync, never skip
    ├── ControlError            a control command was refused; nothing changed
    └── InvariantError          a bug: an invariant of DESIGN.md §3 does not hold

Retriability is decided in exactly one place, :func:`is_retriable`. Wrap errors with
context at each hop (``raise CheckpointError(...) from exc``); tests assert on types,
never on message text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import anyio


class Mongo2pgError(Exception):
    """Raised for every failure mongo2pg itself recognises; the root of the tree."""


class TransientError(Mongo2pgError):
    """Raised when an operation failed for a reason that may pass; retrying is safe."""


class StreamFenced(TransientError):
    """Another applier of the same change stream (a second daemon) has committed past the
    position this batch continues from, or the batch before it is not committed (the
    stored position is behind this batch's start). Nothing of the batch was written; the tailer
    reloads the stored checkpoint and goes on from there, so the stream's events are
    applied in order whoever applies them (DESIGN §3.1, §3.3)."""


class SourceUnavailable(TransientError):
    """Raised when MongoDB cannot serve a request right now (network, stepdown, cursor)."""


class TargetUnavailable(TransientError):
    """Raised when PostgreSQL cannot serve a request right now (connection, serialization)."""


class DataError(Mongo2pgError):
    """Raised when one document cannot be processed; it belongs in the dead-letter table."""


class MappingError(DataError):
    """Raised when a value cannot be converted to a row under the configured mapping rule."""


class ConfigError(Mongo2pgError):
    """Raised when the configuration is unusable; the message names the key and the file."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        super().__init__(message)
        self.key = key
        self.source = source

    def one_line(self) -> str:
        """The message shown to the operator: file, key and reason on one line."""
        where = []
        if self.source:
            where.append(self.source)
        if self.key:
            where.append(f"key '{self.key}'")
        prefix = ": ".join(where)
        text = " ".join(str(self).split())
        return f"config error: {prefix}: {text}" if prefix else f"config error: {text}"


class HistoryLostError(Mongo2pgError):
    """Raised when a change stream cannot resume (code 286, 280, 260 or an unknown token)."""


class ControlError(Mongo2pgError):
    """Raised when a control command is refused; ``code`` names the unmet precondition."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class InvariantError(Mongo2pgError):
    """Raised when an internal invariant is broken: a bug, never retried."""


class ReadLeaseLost(Mongo2pgError):
    """A backfill write whose read lease (``readers`` row) has expired or was removed:
    deletes may since have left no tombstone, so what that read saw must not be written.
    Nothing of the batch was written; the reader starts over with a new lease and a new
    read. Not retried as is."""


# Error codes MongoDB documents as resumable for change streams (network and stepdown
# family, CursorNotFound); from 4.4 on the ResumableChangeStreamError label says the same.
RESUMABLE_MONGO_CODES = frozenset(
    {6, 7, 43, 63, 89, 91, 133, 150, 189, 234, 262, 9001, 10107, 11600, 11602, 13388,
     13435, 13436}
)
# QueryPlanKilled: the server killed a query's cursor under it — its collection was
# renamed or dropped, or an index its plan used was dropped. Not resumable for a change
# stream (its own DDL events say what happened); a backfill reads the chunk again, from
# where its collection lives now (see :func:`read_interrupted`).
READ_INTERRUPTED_CODES = frozenset({175})
# Codes after which a change stream must not be resumed from the same token.
HISTORY_LOST_CODES = frozenset({260, 280, 286})
# PostgreSQL SQLSTATE classes/codes that are worth a retry: serialization failure and
# deadlock (40001, 40P01), shutdown/crash/cannot-connect-now (57P01-57P03), lock not
# available (55P03), statement cancelled or timed out (57014: an operator's
# pg_cancel_backend or a statement_timeout under contention — the step resumes from the
# checkpoint, and a batch that can never finish stays visible in the retries metric),
# and class 53 "insufficient resources" (53000 generic, 53100 disk full, 53200 out of
# memory, 53300 too many connections, 53400 configuration limit exceeded): the server is
# alive but cannot serve this request now; backing off is the right answer.
_RETRIABLE_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03", "55P03",
                                  "57014"})
_RETRIABLE_SQLSTATE_CLASSES = ("08", "53")


def read_interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` ended a collection read because the server killed its cursor
    (:data:`READ_INTERRUPTED_CODES`): reading again is the answer."""
    from pymongo.errors import OperationFailure

    return isinstance(exc, OperationFailure) and (exc.code or 0) in READ_INTERRUPTED_CODES


def is_retriable(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying. The single place that decides it."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, Mongo2pgError):
        return False
    # pymongo errors: decided by label, code, or connection-level type.
    try:
        from pymongo import errors as perr
    except ImportError:  # pragma: no cover - pymongo is a hard dependency
        perr = None  # type: ignore[assignment]
    if perr is not None:
        if isinstance(exc, perr.OperationFailure):
            code = exc.code or 0
            if code in HISTORY_LOST_CODES:
                return False
            if exc.has_error_label("ResumableChangeStreamError"):
                return True
            if exc.has_error_label("RetryableWriteError"):
                return True
            return code in RESUMABLE_MONGO_CODES
        if isinstance(exc, perr.ConnectionFailure | perr.ServerSelectionTimeoutError):
            return True
        if isinstance(exc, perr.CursorNotFound):
            return True
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate in _RETRIABLE_SQLSTATES or sqlstate.startswith(
            _RETRIABLE_SQLSTATE_CLASSES)
    if _is_cleanup_after_lost_connection(exc):
        return True
    return isinstance(exc, ConnectionError | TimeoutError | OSError)


def _is_cleanup_after_lost_connection(exc: BaseException) -> bool:
    """asyncpg raises ``InterfaceError`` ("the underlying connection is closed") from
    ``Transaction.__aexit__`` when the backend was terminated mid-transaction; it
    replaces the retriable error that caused it, which stays as its ``__context__``.
    ``InternalClientError`` ("cannot switch to state …") is what a pooled connection
    whose backend was just terminated raises on its next query; the pool replaces it."""
    try:
        from asyncpg import InterfaceError
        from asyncpg.exceptions import InternalClientError
    except ImportError:  # pragma: no cover - asyncpg is a hard dependency
        return False
    if isinstance(exc, InternalClientError):
        return True
    if not isinstance(exc, InterfaceError):
        return False
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_retriable(cause)


def first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that failed a task group: its first leaf, at any depth, that is not a
    cancellation (those are what the failure caused in the group's other tasks); its
    first leaf when all are."""
    leaves = list(_leaves(group))
    cancelled = anyio.get_cancelled_exc_class()
    return next((e for e in leaves if not isinstance(e, cancelled)), leaves[0])


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@contextlib.contextmanager
def target_errors(what: str | Callable[[], str]) -> Iterator[None]:
    """Raise :class:`TargetUnavailable` ("PostgreSQL unavailable while ``what``"; a
    callable is asked only then, for a description that costs something) for a
    PostgreSQL error inside that may pass: one :func:`is_retriable` accepts, or a lost or
    refused connection — psycopg's and asyncpg's connection errors carry no SQLSTATE, so
    they are recognised by type here. Errors of the tree and any other error pass
    unchanged."""
    import asyncpg
    import psycopg

    try:
        yield
    except Mongo2pgError:
        raise
    except Exception as exc:
        if is_retriable(exc) or isinstance(
                exc, psycopg.OperationalError
                | asyncpg.exceptions.ConnectionDoesNotExistError):
            said = what if isinstance(what, str) else what()
            raise TargetUnavailable(f"PostgreSQL unavailable while {said}") from exc
        raise
