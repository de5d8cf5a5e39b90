#!/usr/bin/env python3
"""Plan A validation (runs in the container or with --local): precision vs fp32, latency per stage, Hz, cold start.
Exit codes: 0 pass, 1 gate failed, 2 bad input, 4 no usable GPU."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from triforce.checks.script import bad_input, finish  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--report-dir", default="reports", help="where plan_a.json is written")
    ap.add_argument("--checkpoint", default="synthetic:pi05_libero", help="checkpoint dir/file or synthetic:<config>")
    ap.add_argument("--config", default="pi05_libero", help="model config")
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
