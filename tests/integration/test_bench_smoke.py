"""A short smoke of every benchmark (DESIGN §8: CI runs only a smoke of them).

Each benchmark runs on a tiny input in its own process, as ``make bench`` runs it. The
smoke checks that the machinery works end to end (ceilings measured, the table printed,
no crash); it asserts no speed: targets are judged on full runs, never in CI.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SMOKES = {
    "sandbox_scan": (["--docs", "2000", "--rounds", "1"], "ratio scan/ceiling"),
    "sandbox_stream": (["--events", "1000", "--rounds", "1"], "insert events/s"),
    "mapping": (["--docs", "500", "--rounds", "1"], "document mode, relaxed"),
    "sink": (["--docs", "1000", "--repeat", "1"], "C_merge"),
    "cdc": (["--events", "400", "--base", "400", "--lag-seconds", "1"], "C_merge"),
    "backfill": (["--docs", "1000", "2000", "--workers", "2"], "backfilling phase: "),
}


@pytest.mark.parametrize("name", sorted(SMOKES))
def test_benchmark_runs_and_prints_its_ratio_table(name: str) -> None:
    args, marker = SMOKES[name]
    out = subprocess.run([sys.executable, "-m", f"tests.bench.{name}", *args],
                         capture_output=True, text=True, timeout=110, check=False)
    # Exit 1 means "ran, missed a target" for the benchmarks that judge themselves;
    # a crash prints a traceback.
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.returncode in (0, 1), out.stderr[-3000:]
    assert marker in out.stdout, out.stdout[-3000:]
