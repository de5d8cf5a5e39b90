#!/usr/bin/env python3
"""Run a script with triforce_kernels from a development build of this checkout (a lent GPU without the wheel):
    python3 bench/with_devbuild.py scripts/validate_plan_b.py --recipe h100 ..."""

import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "cutlass_sm110"))
sys.path.insert(0, str(REPO))

import devbuild  # noqa: E402

tk = devbuild.load()
print(f"[devbuild] triforce_kernels family {tk.family()}", flush=True)
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
