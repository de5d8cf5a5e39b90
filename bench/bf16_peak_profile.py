#!/usr/bin/env python3
"""How the bf16 GEMM's throughput depends on how long the GPU has been running it. Until session 24 Phase 0 timed the
8192^3 bf16 GEMM after a second of warm-up with a sync after every call, and its figure ranged 553-656 TFLOP/s across
sessions and machines (#3's stage floors moved with it). This runs the same GEMM back to back from an idle GPU for a
few seconds, each call between CUDA events, and reports the median throughput in windows of time since the first
call, with the SM clock and power the driver reports before and after; then Phase 0's own figure (now the median of
the calls 1-2 s into such a run, timing.time_sustained) in the same process.
    python3 bench/bf16_peak_profile.py [--seconds 3] [--out-dir bench/results]
Records bench/results/bf16_peak_profile-<gpu>-<date>.json."""

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.checks.phase0 import measure_ceilings  # noqa: E402
from triforce.timing import back_to_back  # noqa: E402

N = 8192
WINDOWS_MS = [(0, 10), (10, 50), (50, 200), (200, 1000), (1000, 2000), (2000, 1e9)]


def smi() -> str:
    query = "clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu,clocks_throttle_reasons.active"
    try:
        return subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        return f"nvidia-smi unavailable: {err}"


def profile(seconds: float) -> list[tuple[float, float]]:
    """(ms since the first call's start, TFLOP/s) of each call of a back-to-back run of about `seconds`."""
    a = torch.randn(N, N, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(N, N, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(N, N, device="cuda", dtype=torch.bfloat16)
    torch.mm(a, b, out=c)                      # the kernel chosen and loaded before the idle wait
    torch.cuda.synchronize()
    time.sleep(3.0)                            # the GPU idles, its clocks and power settle down
    calls = int(seconds / 1.5e-3)              # ~1.5 ms a call at ~730 TFLOP/s
    return [(at, 2 * N**3 / (ms * 1e-3) / 1e12) for at, ms in back_to_back(lambda: torch.mm(a, b, out=c), calls)]


def main():
    ap = rep.bench_parser(__doc__)
    ap.add_argument("--seconds", type=float, default=3.0, help="how long the back-to-back run lasts")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bf16_peak_profile: needs a CUDA GPU")
    before = smi()
    samples = profile(a.seconds)
    after = smi()
    windows = []
    for lo, hi in WINDOWS_MS:
        vals = [t for ms, t in samples if lo <= ms < hi]
        if vals:
            windows.append({"from_ms": lo, "to_ms": min(hi, samples[-1][0]), "calls": len(vals),
                            "median_tflops": float(np.median(vals)), "max_tflops": float(np.max(vals))})
    phase0 = measure_ceilings()["tflops"]["bf16"]
    rep.print_table(f"bf16 {N}^3 GEMM from an idle GPU, back to back ({len(samples)} calls)",
                    ["window (ms since the first call)", "calls", "median TFLOP/s", "max TFLOP/s"],
                    [[f"{w['from_ms']:.0f}-{w['to_ms']:.0f}", w["calls"], w["median_tflops"], w["max_tflops"]]
                     for w in windows])
    print(f"Phase 0's figure (its own run, same process): {phase0:.0f} TFLOP/s")
    print(f"nvidia-smi before: {before}\nnvidia-smi after:  {after}")
    rep.record_run(a.out_dir, "bf16_peak_profile", {
        "gemm": f"{N}x{N}x{N} bf16 (torch.mm)", "windows": windows, "phase0_bf16_tflops": phase0,
        "smi_fields": "clocks.sm, clocks.max.sm, power.draw, power.limit, temperature.gpu, throttle reasons",
        "smi_before": before, "smi_after": after,
        "method": "3 s idle, then calls back to back with CUDA events around each; per-call TFLOP/s by start time"})


if __name__ == "__main__":
    main()
