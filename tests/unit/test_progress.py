"""Backfill progress: ratio, smoothed rate and ETA from chunk-table snapshots."""

from __future__ import annotations

import math

from backfill.progress import ProgressTracker, render_line


def test_eta_follows_the_copy_rate() -> None:
    t = ProgressTracker(alpha=1.0)
    t.update("a.b", estimated=1000, copied=0, copied_bytes=0, total=4, done=0, running=1, now=0)
    p = t.update("a.b", estimated=1000, copied=200, copied_bytes=2000, total=4, done=1,
                 running=1, now=2)
    assert p.rate == 100
    assert p.ratio == 0.2
    assert p.eta_seconds == 8


def test_unknown_rate_gives_nan_eta_and_done_gives_one() -> None:
    t = ProgressTracker()
    p = t.update("a.b", estimated=10, copied=0, copied_bytes=0, total=1, done=0, running=0,
                 now=0)
    assert math.isnan(p.eta_seconds)
    p = t.update("a.b", estimated=10, copied=12, copied_bytes=0, total=1, done=1, running=0,
                 now=1)
    assert p.ratio == 1.0 and p.eta_seconds == 0
    assert "100%" in render_line(t) and "ETA done" in render_line(t)


def test_ratio_stays_below_one_until_every_chunk_is_done() -> None:
    t = ProgressTracker()
    p = t.update("a.b", estimated=10, copied=50, copied_bytes=0, total=2, done=1, running=1,
                 now=0)
    assert p.ratio < 1.0
