"""Run the loader benchmark and keep its result under benchmarks/results/ (the same as ``delibench bench``).

    .venv/bin/python benchmarks/bench.py                       # the three regimes, ~10 min on 2 cores
    .venv/bin/python benchmarks/bench.py --quick --sizes small --profiles cross-region

Every flag of ``delibench bench`` is accepted; ``--out`` defaults to benchmarks/results/bench-<time>.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __name__ == "__main__":
    from delibench.cli.app import main

    args = sys.argv[1:]
    if "--out" not in args:
        out = Path(__file__).resolve().parent / "results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
        args += ["--out", str(out)]
    sys.argv = ["delibench", "bench", *args]
    sys.exit(main())
