#!/usr/bin/env python3
"""FP8 vs bf16 on the Gemma 2B MLP GEMMs at prefix sizes (M = 528, 712): cuBLASLt through torch._scaled_mm with
row-wise (per-channel) scales and with per-tensor scales, vs bf16 torch.mm. CUDA events after warm-up, median of
50, same run. python3 bench/fp8_gemm.py [--out-dir DIR]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.timing import time_cuda  # noqa: E402


def main():
    args = rep.bench_parser(__doc__).parse_args()
    rows = []
    for m in (528, 712):
        for name, n, k in (("gate_up", 32768, 2048), ("down", 2048, 16384)):
            a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.05
            a8, w8 = a.to(torch.float8_e4m3fn), (w * 20).to(torch.float8_e4m3fn)
            sa_row, sb_row = torch.ones(m, 1, device="cuda"), torch.full((1, n), 0.05, device="cuda")
            one = torch.ones((), device="cuda")
            t_bf16 = time_cuda(lambda: a @ w.t(), runs=50, warmup_s=1.0)["median_ms"]
            t_row = time_cuda(lambda: torch._scaled_mm(a8, w8.t(), scale_a=sa_row, scale_b=sb_row, out_dtype=torch.bfloat16), runs=50, warmup_s=1.5)["median_ms"]
            t_tensor = time_cuda(lambda: torch._scaled_mm(a8, w8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16), runs=50, warmup_s=1.5)["median_ms"]
            rows.append({"gemm": name, "m": m, "n": n, "k": k, "bf16_ms": t_bf16, "fp8_rowwise_ms": t_row, "fp8_tensorwise_ms": t_tensor,
                         "speedup_rowwise": t_bf16 / t_row, "speedup_tensorwise": t_bf16 / t_tensor})
    rep.print_table("FP8 vs bf16, Gemma 2B MLP (ms, median of 50)", ["gemm", "M", "bf16", "fp8 row-wise", "fp8 per-tensor", "x row-wise", "x per-tensor"],
                    [[r["gemm"], r["m"], r["bf16_ms"], r["fp8_rowwise_ms"], r["fp8_tensorwise_ms"], r["speedup_rowwise"], r["speedup_tensorwise"]] for r in rows])
    rep.record_run(args.out_dir, "fp8_gemm", {"rows": rows})


if __name__ == "__main__":
    main()
