#!/usr/bin/env python3
"""Phase 0 environment check: GPU, versions, kernel wheel, measured bandwidth/throughput, Pi0.5 GEMM roofline.
Exit codes: 0 ok, 2 bad input, 4 no usable GPU (the report still says what is missing)."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from triforce.checks import phase0  # noqa: E402
from triforce.checks.script import finish  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--report-dir", default="reports", help="where phase0.json is written")
    ap.add_argument("--config", default="pi05_libero", help="model config whose GEMMs are analysed")
    args = ap.parse_args()
    return finish("phase0", args.report_dir, lambda: phase0.run(args.config), phase0.print_summary)


if __name__ == "__main__":
    sys.exit(main())
