"""``python -m tests.bench [NAME ...]`` (``make bench``): run the benchmarks in turn.

Each benchmark measures its ceilings in the same run and prints absolute figures beside
the ratios; see each module's docstring for what it measures and its flags (run one
alone with ``python -m tests.bench.NAME --help``). With no NAME, all of them run with
their defaults. The exit code is non-zero if any benchmark missed a target or failed.
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ("sandbox_scan", "sandbox_stream", "mapping", "sink", "cdc", "backfill")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}",
              file=sys.stderr)
        return 2
    worst = 0
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        rc = subprocess.call([sys.executable, "-m", f"tests.bench.{name}"])
        worst = max(worst, rc)
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
