#!/usr/bin/env python3
"""Plan B validation (in the container or with --local): quantized engine vs bf16 engine and fp32 reference,
latency, speed-up over Plan A, weight bytes, Thor estimate. Exit codes: 0 pass, 1 gate failed, 2 bad input, 4 no GPU."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from triforce.checks.script import add_model_args, bad_input, finish  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    add_model_args(ap, "plan_b")
    ap.add_argument("--recipe", default="auto", help="recipe name (triforce/data/recipes.toml) or .toml file; auto: Phase 0's roofline")
    ap.add_argument("--calibration", type=int, default=16, help="observations for activation calibration")
    ap.add_argument("--observations", type=int, default=64, help="random observations compared with the references")
    ap.add_argument("--runs", type=int, default=50, help="timed graph replays after warm-up")
    args = ap.parse_args()
    if args.observations < 1 or args.runs < 1 or args.calibration < 1:
        return bad_input("--observations, --runs and --calibration must be >= 1")
    from triforce.checks import plan_b

    return finish("plan_b", args.report_dir, lambda: plan_b.run(args.checkpoint, args.config, args.recipe, args.observations,
                                                                args.runs, args.calibration), plan_b.print_summary)


if __name__ == "__main__":
    sys.exit(main())
