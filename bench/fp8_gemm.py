#!/usr/bin/env python3
"""FP8 vs bf16 on the Plan B GEMMs that are compute-bound: the Gemma 2B MLP at prefix sizes (M = 528, the standard
workload's 512 image + 16 prompt tokens; 712) and SigLIP's four GEMMs at M = 512 (two views). Forms, each timed in
a CUDA graph of 18 calls (as in the engine; CUDA events after warm-up, median of 50 replays, same run):
  bf16: torch.mm / addmm (with the bias), and for SigLIP fc1 cuBLASLt's GELU epilogue (the engine's Plan A form);
  fp8 row-wise: torch._scaled_mm with per-row / per-channel scales (+ bias), the engine's FP8 form where nothing
    downstream applies the channel scale;
  fp8 per-tensor: one scale each, bf16 out (the engine's prefix form: the consumer kernel applies the channel scale);
  fp8 per-tensor, E4M3 out (scale_result): half the output bytes, for a consumer that reads FP8 (gate/up -> GeGLU);
  fp8 per-tensor, transposed: W x^T, the output [N, M]: the token count becomes cuBLASLt's N, whose tile need not
    be 128 rows (the prefix's 528 = 4 x 128 + 16 rows leaves a fifth row of tiles nearly empty; M = 512 beside it
    says what that row costs).
Session 12 also timed the prefix's gate/up with its GeGLU fused in one Triton FP8 kernel (two accumulators sharing
each x tile; pointer loads or TMA descriptors, persistent or not) against the engine's two launches: at best 89.0
vs 91.2 us, within the run-to-run spread, and TMA 97.7-124 us; removed after 04b5bd9
(fp8_gemm-*-s12-geglu.json).
python3 bench/fp8_gemm.py [--out-dir DIR]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.timing import time_graph_us  # noqa: E402

F8, BF = torch.float8_e4m3fn, torch.bfloat16
SHAPES = [("gemma gate_up", 528, 32768, 2048, False), ("gemma down", 528, 2048, 16384, False),
          ("gemma gate_up", 512, 32768, 2048, False), ("gemma down", 512, 2048, 16384, False),
          ("gemma qkv", 528, 2560, 2048, False), ("gemma o", 528, 2048, 2048, False),
          ("gemma gate_up", 712, 32768, 2048, False), ("gemma down", 712, 2048, 16384, False),
          ("siglip qkv", 512, 3456, 1152, True), ("siglip o", 512, 1152, 1152, True),
          ("siglip fc1", 512, 4352, 1152, True), ("siglip fc2", 512, 1152, 4352, True)]


def forms(m, n, k, bias):
    a = torch.randn(m, k, device="cuda", dtype=BF)
    w = torch.randn(n, k, device="cuda", dtype=BF) * 0.05
    b = torch.randn(n, device="cuda", dtype=BF) if bias else None
    a8, w8 = a.to(F8), (w * 20).to(F8)
    sa_row, sb_row = torch.ones(m, 1, device="cuda"), torch.full((1, n), 0.05, device="cuda")
    one, half = torch.ones((), device="cuda"), torch.full((), 0.5, device="cuda")
    out = {
        "bf16": lambda: torch.addmm(b, a, w.t()) if bias else a @ w.t(),
        "fp8 row-wise": lambda: torch._scaled_mm(a8, w8.t(), scale_a=sa_row, scale_b=sb_row, bias=b, out_dtype=BF),
        "fp8 per-tensor": lambda: torch._scaled_mm(a8, w8.t(), scale_a=one, scale_b=one, out_dtype=BF),
        "fp8 per-tensor, e4m3 out": lambda: torch._scaled_mm(a8, w8.t(), scale_a=one, scale_b=one, scale_result=half,
                                                             out_dtype=F8),
        "fp8 per-tensor, transposed": lambda: torch._scaled_mm(w8, a8.t(), scale_a=one, scale_b=one, out_dtype=BF),
    }
    if bias:
        out["bf16 + gelu epilogue"] = lambda: torch._addmm_activation(b, a, w.t(), use_gelu=True)
    return out


def main():
    args = rep.bench_parser(__doc__).parse_args()
    rows = []
    for name, m, n, k, bias in SHAPES:
        us = {}
        for form, fn in forms(m, n, k, bias).items():
            try:
                us[form] = time_graph_us([fn] * 18)
            except RuntimeError as err:          # a form cuBLASLt refuses at this shape: recorded, not hidden
                us[form] = None
                print(f"{name} M={m} {form}: {str(err).splitlines()[0]}")
        base = us["bf16"]
        rows.append({"gemm": name, "m": m, "n": n, "k": k, "us": us,
                     "x_bf16": {f: (base / t if t else None) for f, t in us.items()},
                     "tflops": {f: (2 * m * n * k / t / 1e6 if t else None) for f, t in us.items()}})
    cols = ["bf16", "bf16 + gelu epilogue", "fp8 row-wise", "fp8 per-tensor", "fp8 per-tensor, e4m3 out",
            "fp8 per-tensor, transposed"]
    rep.print_table("FP8 vs bf16 (us per call, graph of 18, median of 50 replays; x bf16 in brackets)",
                    ["gemm", "M", "N", "K", *cols],
                    [[r["gemm"], r["m"], r["n"], r["k"],
                      *[("-" if r["us"].get(c) is None else f"{r['us'][c]:.2f} ({r['x_bf16'][c]:.2f}x)") for c in cols]]
                     for r in rows])
    rep.record_run(args.out_dir, "fp8_gemm", {"unit": "us per call, CUDA graph of 18 calls", "rows": rows})


if __name__ == "__main__":
    main()
