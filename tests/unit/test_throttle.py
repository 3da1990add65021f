"""The backfill throttle: a token bucket whose rate changes while it runs."""

from __future__ import annotations

from backfill.throttle import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_unlimited_never_waits() -> None:
    t = Throttle(0, clock=Clock())
    assert t.delay_for(1_000_000) == 0


def test_rate_holds_over_many_batches() -> None:
    clock = Clock()
    t = Throttle(1000, clock=clock)
    passed = 0
    while clock.now < 10:
        delay = t.delay_for(300)
        if delay:
            clock.now += delay
        else:
            passed += 300
    # 10 s at 1000 docs/s plus the initial one-second burst, give or take a batch.
    assert 10_000 <= passed <= 11_300


def test_lowering_the_rate_at_run_time_slows_the_next_batches() -> None:
    clock = Clock()
    t = Throttle(10_000, clock=clock)
    assert t.delay_for(5_000) == 0
    t.set_rate(100)
    assert t.delay_for(100) == 0  # the burst shrinks to one second of the new rate
    assert t.delay_for(100) > 0.9
    t.set_rate(0)
    assert t.delay_for(100) == 0
