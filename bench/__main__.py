"""``python -m bench [--quick] [--backend postgresql|sqlite]``: run and write the results."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .harness import Config, execute
from .report import write

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
        help="short runs, one pass, 1,000 users: checks that it all works (BENCH_QUICK=1)",
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=("postgresql", "sqlite"),
        help="measure only this backend (repeatable; default both)",
    )
    args = parser.parse_args()
    config = Config.make(quick=args.quick, backends=tuple(args.backend or ()) or None)
    run = execute(config)
    out = RESULTS / "tmp" if config.quick else RESULTS
    print(f"results: {write(run, out)}")


if __name__ == "__main__":
    main()
