"""A token bucket limiting copied documents per second, adjustable while running.

Workers call :meth:`Throttle.acquire` with a batch's document count before writing it.
Tokens accrue at ``rate`` per second up to one second's worth (the burst); a batch
larger than the burst waits until the bucket has gone that far into debt, so the
long-run rate holds for any batch size. ``rate <= 0`` means unlimited. :meth:`set_rate`
takes effect at the next acquire (waiters re-check at least every 0.25 s). The clock is
injectable so the arithmetic is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio


class Throttle:
    def __init__(self, rate: float = 0.0, *, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._rate = float(rate)
        self._tokens = max(0.0, self._rate)
        self._stamp = clock()
        self._lock = anyio.Lock()

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        """Change the limit (documents per second; ``<= 0`` = unlimited)."""
        self._refill()
        self._rate = float(rate)
        if self._rate > 0:
            self._tokens = min(self._tokens, self._rate)

    def _refill(self) -> None:
        now = self._clock()
        if self._rate > 0:
            self._tokens = min(self._rate, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def delay_for(self, count: int) -> float:
        """Seconds to wait before ``count`` documents may pass; takes them if 0."""
        self._refill()
        if self._rate <= 0:
            return 0.0
        if self._tokens + 1e-6 >= min(count, self._rate):
            self._tokens -= count  # may go negative: the debt delays the next caller
            return 0.0
        needed = min(count, self._rate) - self._tokens
        return needed / self._rate

    async def acquire(self, count: int) -> None:
        async with self._lock:
            while True:
                delay = self.delay_for(count)
                if delay <= 0:
                    return
                await anyio.sleep(min(delay, 0.25))
