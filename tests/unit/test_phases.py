"""The phase machine's decisions (pure): DESIGN §4 transitions and lag hysteresis."""

from __future__ import annotations

from typing import Any

import pytest

from cdc.types import Phase
from ops.phases import ALLOWED, next_phase


def decide(current: Phase, **facts: Any) -> Phase:
    base: dict[str, Any] = {"stream_started": True, "backfill_done": False,
                            "lag_seconds": None, "threshold": 5.0, "history_lost": False}
    base.update(facts)
    return next_phase(current, **base)


def test_happy_path_init_to_in_sync() -> None:
    assert decide(Phase.INIT, stream_started=False) is Phase.INIT
    assert decide(Phase.INIT) is Phase.BACKFILLING
    assert decide(Phase.BACKFILLING) is Phase.BACKFILLING
    assert decide(Phase.BACKFILLING, backfill_done=True) is Phase.CATCHING_UP
    assert decide(Phase.CATCHING_UP, backfill_done=True, lag_seconds=30) is Phase.CATCHING_UP
    assert decide(Phase.CATCHING_UP, backfill_done=True, lag_seconds=5) is Phase.IN_SYNC


def test_in_sync_falls_back_only_past_twice_the_threshold() -> None:
    assert decide(Phase.IN_SYNC, backfill_done=True, lag_seconds=9) is Phase.IN_SYNC
    assert decide(Phase.IN_SYNC, backfill_done=True, lag_seconds=11) is Phase.CATCHING_UP
    assert decide(Phase.IN_SYNC, backfill_done=True, lag_seconds=None) is Phase.IN_SYNC


@pytest.mark.parametrize("phase", [Phase.INIT, Phase.BACKFILLING, Phase.CATCHING_UP,
                                   Phase.IN_SYNC])
def test_history_loss_requires_resync_from_any_running_phase(phase: Phase) -> None:
    assert decide(phase, history_lost=True) is Phase.RESYNC_REQUIRED
    assert Phase.RESYNC_REQUIRED in ALLOWED[phase]


def test_resync_goes_back_to_backfilling_and_cutover_phases_are_left_alone() -> None:
    assert decide(Phase.RESYNC_REQUIRED) is Phase.BACKFILLING
    assert ALLOWED[Phase.RESYNC_REQUIRED] == {Phase.BACKFILLING}
    for phase in (Phase.CUT_OVER, Phase.ROLLED_BACK, Phase.FINALIZED):
        assert decide(phase, history_lost=True, backfill_done=True, lag_seconds=0) is phase


def test_every_decision_is_an_allowed_transition() -> None:
    for phase in Phase:
        for done in (False, True):
            for lag in (None, 0.0, 7.0, 100.0):
                for lost in (False, True):
                    nxt = decide(phase, backfill_done=done, lag_seconds=lag, history_lost=lost)
                    assert nxt is phase or nxt in ALLOWED[phase]
