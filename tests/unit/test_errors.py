from __future__ import annotations

import anyio
import asyncpg
import pytest
from pymongo.errors import AutoReconnect, OperationFailure

from cdc.errors import (
    ConfigError,
    HistoryLostError,
    MappingError,
    SourceUnavailable,
    TargetUnavailable,
    first_failure,
    is_retriable,
)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (SourceUnavailable("x"), True),
        (TargetUnavailable("x"), True),
        (MappingError("x"), False),
        (ConfigError("x"), False),
        (HistoryLostError("x"), False),
        (AutoReconnect("x"), True),
        (OperationFailure("x", code=43), True),
        (OperationFailure("x", code=11602), True),
        (OperationFailure("x", code=286), False),
        (OperationFailure("x", code=280,
                          details={"errorLabels": ["ResumableChangeStreamError"]}), False),
        (OperationFailure("x", code=2), False),
        (OperationFailure("x", code=2, details={"errorLabels": ["ResumableChangeStreamError"]}),
         True),
        (ValueError("x"), False),
        (asyncpg.exceptions.TooManyConnectionsError("x"), True),
        (asyncpg.exceptions.DiskFullError("x"), True),
        (asyncpg.exceptions.OutOfMemoryError("x"), True),
        (asyncpg.exceptions.QueryCanceledError("x"), True),
        (asyncpg.exceptions.UniqueViolationError("x"), False),
    ],
)
def test_retriability_is_decided_by_type_code_and_label(exc: BaseException, expected: bool
                                                        ) -> None:
    assert is_retriable(exc) is expected


def test_the_failure_of_a_task_group_is_its_first_leaf_that_is_not_a_cancellation() -> None:
    async def main() -> None:  # the cancellation class is the running backend's
        cancelled = anyio.get_cancelled_exc_class()
        real = ConnectionResetError("lost")
        # A nested group of cancellations only comes first; the real error is later.
        group = BaseExceptionGroup("outer", [
            BaseExceptionGroup("inner", [cancelled(), cancelled()]),
            BaseExceptionGroup("second", [cancelled(), real])])
        assert first_failure(group) is real
        only = cancelled()
        assert first_failure(BaseExceptionGroup("all", [only, cancelled()])) is only

    anyio.run(main)
