#!/usr/bin/env python3
"""SigLIP's o projection (K = 1152) and fc2 (K = 4352), each with the add_norm after it (the standard workload's 512
image rows, width 1152): the engine's pair (cuBLAS GEMM with its bias, then fused.add_norm) against
fused.gemm_add_layernorm (one launch: the GEMM adds into the fp32 residual, each row block's programs meet at a
counter and LayerNorm the tiles they hold), its tiles by pointer loads or by tensor descriptors (TMA), in launch
shapes (rows x columns x k a tile, warps, stages); also each GEMM alone (torch's cuBLAS; the Triton kernel without the
LayerNorm) to tell the GEMM's share. Each entry: median us per call in a CUDA graph of 20 calls (device events after
warm-up), and the LayerNorm output's max abs difference from the pair's. Shapes whose grid exceeds the GPU's SMs are
skipped (their programs wait for each other: all must be resident).
    python3 bench/gemm_norm.py [--out-dir bench/results]
Records bench/results/gemm_norm-<gpu>-<date>.json."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.runtime import fused  # noqa: E402
from triforce.timing import time_graph_us  # noqa: E402

ROWS, WIDTH, CALLS = 512, 1152, 20
# (block_m, block_n, block_k, warps, stages, tma)
SHAPES = ((64, 128, 64, 4, 3, False), (64, 128, 64, 4, 3, True), (64, 128, 64, 4, 4, True), (64, 128, 64, 4, 5, True),
          (64, 128, 128, 4, 3, True), (64, 128, 64, 8, 4, True), (128, 64, 64, 8, 4, True), (128, 128, 64, 8, 4, True))


def bench_depth(k: int, sms: int) -> list:
    dev = "cuda"
    att = torch.randn(ROWS, k, device=dev).bfloat16()
    w = (torch.randn(WIDTH, k, device=dev) / k ** 0.5).bfloat16()
    bias = torch.randn(WIDTH, device=dev).bfloat16()
    x0 = torch.randn(ROWS, WIDTH, device=dev) * 4
    ln_w, ln_b = torch.randn(WIDTH, device=dev), torch.randn(WIDTH, device=dev)

    def pair(x, out):
        fused.add_norm(x, out, y=torch.addmm(bias, att, w.t()), weight=ln_w, bias=ln_b, layernorm=True)

    def one(shape, normalize=True):
        bm, bn, bk, warps, stages, tma = shape
        counters = torch.zeros(-(-ROWS // bm), dtype=torch.int32, device=dev)
        return lambda x, out: fused.gemm_add_layernorm(att, w, bias, x, out, ln_w, ln_b, counters, block_m=bm,
                                                       block_n=bn, block_k=bk, num_warps=warps, num_stages=stages,
                                                       tma=tma, normalize=normalize)

    ref_x, ref = x0.clone(), torch.empty(ROWS, WIDTH, dtype=torch.bfloat16, device=dev)
    pair(ref_x, ref)
    entries = []

    def measure(name, fn, shape=None, check=True):
        x, out = x0.clone(), torch.empty_like(ref)
        fn(x, out)
        diff = float((out.float() - ref.float()).abs().max()) if check else None
        resid = float((x - ref_x).abs().max())
        us = time_graph_us([lambda: fn(x, out)] * CALLS)
        entries.append({"k": k, "variant": name, "shape": shape, "us": us, "max_abs_diff_out": diff,
                        "max_abs_diff_residual": resid})

    measure("cuBLAS GEMM + add_norm (the engine's pair, torch's GEMM)", pair)
    y = torch.empty(ROWS, WIDTH, dtype=torch.bfloat16, device=dev)
    entries.append({"k": k, "variant": "cuBLAS GEMM alone (torch.addmm)", "shape": None, "us": time_graph_us(
        [lambda: torch.addmm(bias, att, w.t(), out=y)] * CALLS), "max_abs_diff_out": None,
        "max_abs_diff_residual": None})
    for shape in SHAPES:
        programs = fused.gemm_norm_programs(ROWS, WIDTH, shape[0], shape[1])
        if programs > sms:
            print(f"skipped {shape}: {programs} programs > {sms} SMs")
            continue
        label = f"{shape[0]}x{shape[1]}x{shape[2]}, {shape[3]} warps, {shape[4]} stages, {'TMA' if shape[5] else 'pointers'}"
        launch = dict(zip(("block_m", "block_n", "block_k", "num_warps", "num_stages", "tma"), shape))
        measure(f"fused {label}", one(shape), launch)
        measure(f"Triton GEMM + residual alone {label}", one(shape, normalize=False), launch, check=False)
    return entries


def main():
    a = rep.bench_parser(__doc__).parse_args()
    torch.manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    entries = []
    for k in (WIDTH, 4352):
        rows = bench_depth(k, sms)
        base = rows[0]["us"]
        rep.print_table(f"SigLIP {'o' if k == WIDTH else 'fc2'} + residual + LayerNorm, {ROWS} x {WIDTH} x {k} "
                        f"(us a call, graph of {CALLS})", ["variant", "us", "vs pair", "out diff", "residual diff"],
                        [[e["variant"], e["us"], e["us"] / base, e["max_abs_diff_out"], e["max_abs_diff_residual"]]
                         for e in rows])
        entries += rows
    rep.record_run(a.out_dir, "gemm_norm", {"unit": f"us per call, CUDA graph of {CALLS} calls",
                                            "shape": {"rows": ROWS, "width": WIDTH}, "entries": entries})


if __name__ == "__main__":
    main()
