from __future__ import annotations

import anyio
import pytest
from pymongo.errors import AutoReconnect, OperationFailure

from cdc.errors import HistoryLostError, TargetUnavailable
from cdc.retry import RetryPolicy, call_with_retry

FAST = RetryPolicy(initial_s=0.001, max_s=0.002)


def test_transient_failures_are_retried_until_success_and_reported() -> None:
    failures: list[BaseException] = [AutoReconnect("x"), TargetUnavailable("y"),
                                     OperationFailure("z", code=11602)]
    seen: list[tuple[str, int]] = []

    async def step() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    async def main() -> str:
        return await call_with_retry(FAST, step,
                                     lambda exc, n: seen.append((type(exc).__name__, n)))

    assert anyio.run(main) == "done"
    assert seen == [("AutoReconnect", 1), ("TargetUnavailable", 2), ("OperationFailure", 3)]


@pytest.mark.parametrize("exc", [HistoryLostError("gone"), OperationFailure("x", code=286),
                                 ValueError("bug")])
def test_non_retriable_failures_propagate_at_once(exc: BaseException) -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        raise exc

    with pytest.raises(type(exc)):
        anyio.run(call_with_retry, FAST, step)
    assert calls == 1


def test_attempts_are_capped_when_the_policy_says_so() -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        raise AutoReconnect("down")

    with pytest.raises(AutoReconnect):
        anyio.run(call_with_retry, RetryPolicy(initial_s=0.001, max_s=0.001, max_attempts=4),
                  step)
    assert calls == 4


def test_waits_grow_exponentially_with_jitter_under_the_cap() -> None:
    from cdc.retry import retrying

    policy = RetryPolicy(initial_s=0.01, max_s=0.05)
    wait = retrying(policy).wait
    import tenacity

    caps = []
    for attempt in range(1, 8):
        state = tenacity.RetryCallState(retry_object=retrying(policy), fn=None, args=(),
                                        kwargs={})
        state.attempt_number = attempt
        samples = [wait(state) for _ in range(200)]
        assert all(0 <= s <= 0.05 for s in samples)
        caps.append(max(samples))
    assert caps[0] <= 0.01 + 1e-9
    assert caps[2] > caps[0]  # grows
    assert min(caps[5:]) > 0.04  # then the cap holds


def test_asyncpg_cleanup_error_after_a_lost_connection_is_retriable() -> None:
    import asyncpg

    from cdc.errors import is_retriable

    try:
        try:
            raise asyncpg.exceptions.AdminShutdownError("terminating connection")
        except asyncpg.exceptions.AdminShutdownError:
            raise asyncpg.InterfaceError("the underlying connection is closed") from None
    except asyncpg.InterfaceError as exc:
        # "from None" hides the context from tracebacks but keeps __context__.
        assert is_retriable(exc)
    assert not is_retriable(asyncpg.InterfaceError("misuse"))
