#!/usr/bin/env python3
"""Pi0.5's large GEMMs (SigLIP at 512 image rows, the prefix at 528 and 512 tokens) timed as the engine's tuner
times them (runtime/gemm_tuning.py: each in a CUDA graph of repeated calls, weights rotated through copies larger than
L2, median of replays): torch's op (cuBLASLt's heuristic first answer) against the fastest of cuBLASLt's candidates,
in bf16 (Plan A) and FP8 with per-tensor scales (Plan B: the deferred channel-scale form, E4M3 out where Plan B
writes it), with and without FP8 fast accumulation. Random inputs (timing only). Records
bench/results/gemm_tuning-<gpu>-<date>.json.
    python3 bench/with_devbuild.py bench/gemm_tuning.py [--out-dir bench/results]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import triforce_kernels as tk  # noqa: E402
from triforce import report as rep  # noqa: E402
from triforce.runtime.gemm_tuning import GemmTuner  # noqa: E402

E4M3 = torch.float8_e4m3fn
# (stage, layer, M, N, K, bias): the standard workload's shapes (engine layout: fused QKV and gate/up, SigLIP's MLP
# padded to 4352). SigLIP's fc1 runs its GELU in the bf16 GEMM's epilogue; Plan B's FP8 fc1 and prefix gate/up write
# E4M3 (E4M3_OUT).
SHAPES = [("vision", "qkv", 512, 3456, 1152, True), ("vision", "o", 512, 1152, 1152, True),
          ("vision", "fc1", 512, 4352, 1152, True), ("vision", "fc2", 512, 1152, 4352, True),
          ("vision", "projector", 512, 2048, 1152, True),
          *(("prefix", name, m, n, k, False) for m in (528, 512)
            for name, n, k in (("qkv", 2560, 2048), ("o", 2048, 2048), ("gate_up", 32768, 2048), ("down", 2048, 16384)))]
GELU = {("vision", "fc1")}
E4M3_OUT = {("vision", "fc1"), ("prefix", "gate_up")}


def main():
    a = rep.bench_parser(__doc__).parse_args()
    tuner = GemmTuner(tk, log=print)
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for stage, layer, m, n, k, bias in SHAPES:
        xb = torch.randn(m, k, device="cuda", generator=g).bfloat16()
        wb = (torch.randn(n, k, device="cuda", generator=g) * k ** -0.5).bfloat16()
        b = torch.randn(n, device="cuda", generator=g).bfloat16() if bias else None
        if (stage, layer) in GELU:
            tuner.matmul(xb, wb, torch.bfloat16, lambda w: torch._addmm_activation(b, xb, w.t(), use_gelu=True),
                         bias=b, gelu=True)
        elif b is not None:
            tuner.matmul(xb, wb, torch.bfloat16, lambda w: torch.addmm(b, xb, w.t()), bias=b)
        else:
            tuner.matmul(xb, wb, torch.bfloat16, lambda w: xb @ w.t())
        x8, w8 = (xb.float() * 8).to(E4M3), (wb.float() * 8 * k ** 0.5).to(E4M3)
        sx, sw = torch.tensor(1 / 8, device="cuda"), torch.tensor(1 / (8 * k ** 0.5), device="cuda")
        out = E4M3 if (stage, layer) in E4M3_OUT else torch.bfloat16
        for fast in (False, True):
            tuner.matmul(x8, w8, out, lambda w: torch._scaled_mm(x8, w.t(), scale_a=sx, scale_b=sw, out_dtype=out,
                                                                 use_fast_accum=fast),
                         scale_x=sx, scale_w=sw, fast_accum=fast)
        for row in tuner.table()[-3:]:
            row.update(stage=stage, layer=layer)
            rows.append([stage, layer, row["label"], row["torch_us"], row["best_candidate_us"], row["runs"],
                         row["speedup_vs_torch"]])
    rep.print_table("GEMMs: torch's op vs cuBLASLt's fastest candidate (us a call, weights from DRAM)",
                    ["stage", "layer", "GEMM", "torch", "best candidate", "runs", "x vs torch"], rows)
    rep.record_run(a.out_dir, "gemm_tuning", {"torch": torch.__version__, "gemms": tuner.table(),
                                              "note": "random inputs; each GEMM in a CUDA graph of repeated calls with "
                                                      "its weights rotated through copies larger than L2"})


if __name__ == "__main__":
    main()
