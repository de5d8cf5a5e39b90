#!/usr/bin/env python3
"""Few-row GEMM paths at the denoise shapes (M = 10): cuBLAS bf16, the Triton skinny bf16 kernel, the wheel's
CUTLASS W4A16 and the Triton few-row W4A16 - why Plan A and Plan B use the kernels they use. Each timed as a CUDA
graph of calls over weight copies that overflow L2 (median of 50 replays after warm-up, per call), same run.
    python3 bench/w4a16_paths.py [--out-dir DIR] [--m 10]"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "cutlass_sm110")]

import torch  # noqa: E402

import devbuild  # noqa: E402
from triforce import report as rep  # noqa: E402
from triforce.quant import formats as fm  # noqa: E402
from triforce.runtime import fused  # noqa: E402
from triforce.timing import copy_gbs, time_graph_us  # noqa: E402

SHAPES = [("expert qkv", 2560, 1024), ("expert o", 1024, 2048), ("expert gate_up", 8192, 1024), ("expert down", 1024, 4096),
          ("gemma gate_up", 16384, 2048), ("gemma down", 2048, 16384)]


def graph_ms(calls, copies):
    """Per-call ms of a CUDA graph running calls(i) for every weight copy i."""
    return time_graph_us([lambda i=i: calls(i) for i in range(copies)], warmup_s=0.5) / 1e3


def main():
    ap = rep.bench_parser(__doc__)
    ap.add_argument("--m", type=int, default=10, help="rows (tokens)")
    args = ap.parse_args()
    tk = devbuild.load()
    rows, m = [], args.m
    for name, n, k in SHAPES:
        copies = max(2, int(2 * 50e6 // (n * k * 2)) + 1)       # bf16 copies covering 2x the 50 MB L2
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.05 for _ in range(copies)]
        q = [fm.quantize_int4_g128(w.float()) for w in ws]
        q = [(p.cuda(), s.cuda()) for p, s in q]
        packed = [tk.w4a16_prepack(p, s) for p, s in q]
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        out16 = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        acc = torch.zeros(m, n, device="cuda")
        wsp = torch.empty(max(1, tk.w4a16_workspace_size(m, n, k)), dtype=torch.uint8, device="cuda")
        ref = x.float() @ fm.dequantize_int4_g128(q[0][0].cpu(), q[0][1].cpu()).cuda().T
        tk.w4a16_gemm(x, *packed[0], out16, wsp)
        err_cutlass = float((out16.float() - ref).norm() / ref.norm())
        err_triton = float((fused.skinny_w4a16(x, *q[0]) - ref).norm() / ref.norm())
        t = {
            "cublas_bf16": graph_ms(lambda i: torch.mm(x, ws[i].t(), out=out16), copies),
            "triton_skinny_bf16": graph_ms(lambda i: fused.skinny_linear(x, ws[i], out=acc), copies),
            "cutlass_w4a16": graph_ms(lambda i: tk.w4a16_gemm(x, *packed[i], out16, wsp), copies),
            "triton_w4a16": graph_ms(lambda i: fused.skinny_w4a16(x, *q[i], out=acc), copies),
        }
        int4_bytes = fm.int4_g128_bytes(n, k)
        rows.append({"gemm": name, "m": m, "n": n, "k": k, "ms": t, "rel_err": {"cutlass_w4a16": err_cutlass, "triton_w4a16": err_triton},
                     "triton_w4a16_weight_gbs": int4_bytes / (t["triton_w4a16"] * 1e-3) / 1e9,
                     "cutlass_w4a16_weight_gbs": int4_bytes / (t["cutlass_w4a16"] * 1e-3) / 1e9})
        del ws, q, packed
        torch.cuda.empty_cache()
    copy = copy_gbs()
    rep.print_table(f"few-row GEMM paths at M={m} (us per call; weight GB/s vs copy {copy:.0f})",
                    ["gemm", "cuBLAS bf16", "Triton bf16", "CUTLASS W4A16", "Triton W4A16", "W4A16 GB/s C | T", "rel err C | T"],
                    [[r["gemm"], r["ms"]["cublas_bf16"] * 1e3, r["ms"]["triton_skinny_bf16"] * 1e3, r["ms"]["cutlass_w4a16"] * 1e3,
                      r["ms"]["triton_w4a16"] * 1e3, f"{r['cutlass_w4a16_weight_gbs']:.0f} | {r['triton_w4a16_weight_gbs']:.0f}",
                      f"{r['rel_err']['cutlass_w4a16']:.1e} | {r['rel_err']['triton_w4a16']:.1e}"] for r in rows])
    rep.record_run(args.out_dir, "w4a16_paths", {
        "copy_gbs": copy, "rows": rows,
        "timing": "per call: CUDA graph of calls over weight copies covering 2x L2, CUDA events, median of 50 replays"})


if __name__ == "__main__":
    main()
