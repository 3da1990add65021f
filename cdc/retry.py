"""Retrying transient failures: capped exponential backoff with full jitter.

Whether a failure is worth another try is decided in one place,
:func:`cdc.errors.is_retriable` (network errors, the stepdown family, the
``ResumableChangeStreamError`` label, PostgreSQL connection loss and serialization
failures); everything else propagates at once. Waits grow as
``random(0, min(max_s, initial_s * 2**attempt))`` — full jitter, so many daemons that
lost the same server do not come back in lockstep (the AWS "exponential backoff and
jitter" scheme tenacity implements as ``wait_random_exponential``).

The unit that is retried should be one *step* that resumes from committed state (the
tailer retries one read+apply step, which reopens its stream from the last committed
checkpoint): attempts then count consecutive failures only, and the backoff starts
small again after any success. Sleeping goes through ``anyio.sleep``, so a cancelled
caller stops waiting at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import msgspec
import tenacity

from cdc.errors import is_retriable

T = TypeVar("T")


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How transient failures are retried."""

    initial_s: float = 0.05
    """Scale of the first wait, in seconds."""
    max_s: float = 10.0
    """Cap of any single wait, in seconds."""
    max_attempts: int = 0
    """Give up (re-raise) after this many consecutive failures; 0 retries forever."""


def retrying(policy: RetryPolicy,
             on_retry: Callable[[BaseException, int], None] | None = None
             ) -> tenacity.AsyncRetrying:
    """A tenacity controller for ``policy``; ``on_retry(exc, attempt)`` runs before a wait."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(exc, state.attempt_number)

    stop: tenacity.stop.stop_base = (
        tenacity.stop_after_attempt(policy.max_attempts) if policy.max_attempts > 0
        else tenacity.stop_never
    )
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(is_retriable),
        wait=tenacity.wait_random_exponential(multiplier=policy.initial_s, max=policy.max_s),
        stop=stop,
        sleep=anyio.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


async def call_with_retry(policy: RetryPolicy, fn: Callable[[], Awaitable[T]],
                          on_retry: Callable[[BaseException, int], None] | None = None) -> T:
    """Await ``fn()`` until it succeeds, a failure is not retriable, or attempts run out."""
    async for attempt in retrying(policy, on_retry):
        with attempt:
            return await fn()
    raise AssertionError("unreachable: tenacity re-raises the last failure")  # pragma: no cover
