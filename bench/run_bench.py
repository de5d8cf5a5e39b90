#!/usr/bin/env python3
"""`invoke bench` without invoke (a lent GPU has no invoke): same function, same record.
    python3 bench/run_bench.py [--plan all] [--recipe h100] [--runs 50] [--out-dir bench/results] [--no-server]"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from triforce import bench  # noqa: E402
from triforce.checks.script import add_model_args  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--plan", default="all", help="a, b or all")
    add_model_args(ap)
    ap.add_argument("--recipe", default="h100", help="plan b recipe")
    ap.add_argument("--runs", type=int, default=50, help="timed runs (>= 50)")
    ap.add_argument("--out-dir", default="bench/results", help="where the JSON record goes")
    ap.add_argument("--no-server", action="store_true", help="skip the round trip through the policy server")
    a = ap.parse_args()
    result, path = bench.run(a.checkpoint, a.config, a.plan, a.recipe, a.runs, a.out_dir, not a.no_server, " ".join(sys.argv))
    bench.print_summary(result)
    print(f"recorded: {path}")


if __name__ == "__main__":
    main()
