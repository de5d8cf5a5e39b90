#!/usr/bin/env python3
"""The Triton few-row W4A16 kernel (fused.skinny_w4a16) at M <= 64 against the copy bandwidth on its weight bytes
(the Plan B issue asks >= 70%), over its launch shapes, on the Pi0.5 GEMMs that stream the most int4 bytes; cuBLAS
bf16 on the same shapes in the same run for the ratio. Every entry: a CUDA graph of calls over weight copies that
overflow L2, median of 50 replays after warm-up, per call. Also the engine's and the best launch shape as the engine's
denoise chain launches them (engine.DENOISE_LAUNCHES "dependent"): each call a programmatic dependent launch that
waits on the GPU for the call before it (the calls accumulate into one output, a true dependency); per call, a
throughput in a chain of GEMMs, not one GEMM's latency.
Records bench/results/w4a16_sweep-<gpu>-<date>.json.
    python3 bench/w4a16_sweep.py [--engine-shape-only] [--out-dir bench/results]"""

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.quant import formats as fm  # noqa: E402
from triforce.runtime import fused  # noqa: E402
from triforce.timing import copy_gbs, time_graph_us  # noqa: E402

SHAPES = [("gemma gate (half of gate/up)", 16384, 2048), ("gemma down", 2048, 16384), ("expert gate_up", 8192, 1024),
          ("expert down", 1024, 4096)]
ROWS = (10, 64)
# the engine's launch shape (the wrapper's defaults), then the grid around it
ENGINE_DEFAULT: dict = {}
SHAPE_GRID = [ENGINE_DEFAULT] + [dict(block_n=bn, groups=g, num_warps=w, num_stages=2)
                                 for bn, g, w in itertools.product((64, 128, 256), (1, 2), (4, 8))]
# session 5 compared the int4 -> bf16 conversion (I2F) with the bit-pattern dequant that replaced it, at the engine's
# launch shape then: 1.4-2.9x faster (bench/results/w4a16_sweep-*-s5.json, "convert_default" / "magic_default")


def per_call_us(call, copies):
    return time_graph_us([lambda i=i: call(i) for i in range(copies)], warmup_s=0.3)


def chained(x, q, acc, shape, copies, int4_bytes, copy) -> dict:
    """The shape's per-call time with dependent launches."""
    with fused.dependent_launches():
        us = per_call_us(lambda i: fused.skinny_w4a16(x, *q[i], out=acc, **shape), copies)
    return {"us": us, "copy_fraction": int4_bytes / (us * 1e-6) / 1e9 / copy}


def sweep_shape(name, n, k, copy, grid):
    copies = max(2, int(2 * 50e6 // (n * k // 2)) + 1)          # int4 copies covering 2x the 50 MB L2
    q = [fm.quantize_int4_g128(torch.randn(n, k, device="cuda") * 0.05) for _ in range(copies)]
    w16 = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(max(2, int(2 * 50e6 // (n * k * 2)) + 1))]
    int4_bytes = n * k // 2 + n * (k // 128) * 2
    ref_w = fm.dequantize_int4_g128(*q[0])
    out = []
    for m in ROWS:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        acc = torch.zeros(m, n, device="cuda")
        ref = x.float() @ ref_w.T
        cublas = per_call_us(lambda i: torch.mm(x, w16[i % len(w16)].t()), len(w16))
        tried = []
        for shape in grid:
            if k % (128 * shape.get("groups", 1)):     # the engine default picks its groups from K
                continue
            try:
                err = float((fused.skinny_w4a16(x, *q[0], **shape) - ref).norm() / ref.norm())
                us = per_call_us(lambda i: fused.skinny_w4a16(x, *q[i], out=acc, **shape), copies)
            except Exception as e:    # a shape that does not compile (registers, shared memory) is a result too
                tried.append({"shape": shape, "error": str(e).splitlines()[0][:100]})
                continue
            tried.append({"shape": shape, "us": us, "rel_err": err, "copy_fraction": int4_bytes / (us * 1e-6) / 1e9 / copy})
        ok = [t for t in tried if "us" in t]
        best = min(ok, key=lambda t: t["us"])
        for extra in (dict(programs=512), dict(programs=128), dict(num_stages=3), dict(num_stages=4))[:len(grid) - 1]:
            shape = {**best["shape"], **extra}
            us = per_call_us(lambda i: fused.skinny_w4a16(x, *q[i], out=acc, **shape), copies)
            tried.append({"shape": shape, "us": us, "copy_fraction": int4_bytes / (us * 1e-6) / 1e9 / copy})
        best = min((t for t in tried if "us" in t), key=lambda t: t["us"])
        default = next(t for t in tried if t.get("shape") == ENGINE_DEFAULT)
        chain = {label: chained(x, q, acc, t["shape"], copies, int4_bytes, copy)
                 for label, t in (("default", default), ("best", best))}
        out.append({"gemm": name, "m": m, "n": n, "k": k, "int4_bytes": int4_bytes, "cublas_bf16_us": cublas,
                    "default": default, "best": best, "tried": tried, "best_vs_cublas": cublas / best["us"],
                    "chained": chain})
        print(f"{name} M={m}: best {best['shape']} {best['us']:.2f} us = {best['copy_fraction']:.0%} of copy BW "
              f"(engine default {default['us']:.2f} us, cuBLAS bf16 {cublas:.2f} us); chained "
              f"{chain['best']['copy_fraction']:.0%}", flush=True)
    return out


def main():
    ap = rep.bench_parser(__doc__)
    ap.add_argument("--engine-shape-only", action="store_true", help="only the engine's launch shape, no grid")
    a = ap.parse_args()
    torch.manual_seed(0)
    copy = copy_gbs()
    grid = [ENGINE_DEFAULT] if a.engine_shape_only else SHAPE_GRID
    rows = [r for name, n, k in SHAPES for r in sweep_shape(name, n, k, copy, grid)]
    rep.print_table(f"Triton W4A16 at M <= 64 (copy {copy:.0f} GB/s; us per call; chained: dependent launches)",
                    ["gemm", "M", "engine default us", "best us", "best shape", "best % of copy BW", "cuBLAS bf16 us",
                     "chained us", "chained % of copy BW"],
                    [[r["gemm"], r["m"], r["default"]["us"], r["best"]["us"], str(r["best"]["shape"]),
                      f"{r['best']['copy_fraction']:.0%}", r["cublas_bf16_us"],
                      r["chained"]["best"]["us"], f"{r['chained']['best']['copy_fraction']:.0%}"] for r in rows])
    rep.record_run(a.out_dir, "w4a16_sweep", {
        "copy_gbs": copy, "rows": rows,
        "timing": "per call: CUDA graph of calls over weight copies covering 2x L2, CUDA events, median of 50 replays"})


if __name__ == "__main__":
    main()
