#!/usr/bin/env python3
"""The wheel's few-row W4A16 kernel (w4a16_skinny) on the Gemma gate's weights (16384 x 2048 int4) at M = 1 and 10,
splits 2 (each M's best in bench/w4a16_sweep.py), two calls each: the launches for Nsight Compute to read (its
default cache control flushes the caches before each profiled launch, so each reads its weights from DRAM). The
sweep has M = 10 at 51% of copy bandwidth against 60% at M = 1 for the same bytes; the counters say where the
difference goes (DRAM throughput, issue stalls, tensor pipe).
Run under ncu, e.g.
    ncu -k regex:w4a16_skinny --section SpeedOfLight --section WarpStateStats --section SchedulerStats \\
        python3 bench/with_devbuild.py bench/ncu_w4a16_skinny.py"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from triforce.quant import formats as fm  # noqa: E402

N, K, CALLS = 16384, 2048, 2


def main():
    import triforce_kernels as tk

    torch.manual_seed(0)
    q, s = fm.quantize_int4_g128(torch.randn(N, K, device="cuda") * 0.05)
    weights = (fm.pack_int4_fragments(q), fm.pack_scales_fragments(s))
    for m in (1, 10):
        x = torch.randn(m, K, device="cuda", dtype=torch.bfloat16)
        acc = torch.zeros(m, N, device="cuda")
        for _ in range(CALLS):
            tk.w4a16_skinny(x, *weights, acc, splits=2)
        torch.cuda.synchronize()
        print(f"M = {m}: {CALLS} calls", flush=True)


if __name__ == "__main__":
    main()
