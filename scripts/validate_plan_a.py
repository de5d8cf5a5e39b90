#!/usr/bin/env python3
"""Plan A validation (runs in the container or with --local): precision vs fp32, latency per stage, Hz, cold start.
Exit codes: 0 pass, 1 gate failed, 2 bad input, 4 no usable GPU."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from triforce.checks.script import add_model_args, bad_input, finish  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    add_model_args(ap, "plan_a")
    ap.add_argument("--observations", type=int, default=32, help="random observations compared with the reference")
    ap.add_argument("--runs", type=int, default=50, help="timed graph replays after warm-up")
    args = ap.parse_args()
    if args.observations < 1 or args.runs < 1:
        return bad_input("--observations and --runs must be >= 1")
    from triforce.checks import plan_a

    return finish("plan_a", args.report_dir, lambda: plan_a.run(args.checkpoint, args.config, args.observations, args.runs),
                  plan_a.print_summary)


if __name__ == "__main__":
    sys.exit(main())
