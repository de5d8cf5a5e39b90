#!/usr/bin/env python3
"""The denoise step's expert-layer kernels at pi05_libero shapes (10 rows), timed alone and as the layer chain.

18 distinct weight sets, like the 18 layers (623 MB: nothing stays in L2 between replays). Every variant is a CUDA
graph of 18 launches, one per layer; us per launch = replay median (device events, after warm-up) / 18. Sweeps the
launch shapes of expert_layer.TUNING and the skinny GEMM's, against cuBLAS and the per-GEMM path's kernels, then
times the whole fused layer chain with and without programmatic dependent launch and L2 prefetch. Prints tables
and records bench/results/expert_kernels-<gpu>-<date>.json.
    python3 bench/expert_kernels.py [--runs 50] [--out-dir bench/results] [--quick]"""

import argparse
import itertools
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.runtime import expert_layer, fused  # noqa: E402
from triforce.timing import time_cuda  # noqa: E402

M, W, H, D, I, L, SEQ = 10, 1024, 8, 256, 4096, 18, 528
BF16 = torch.bfloat16


def graph_us(fn, runs):
    """us per layer of fn(layer) launched for all 18 layers inside one captured graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(L):
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(L):
            fn(i)
    return time_cuda(g.replay, runs=runs, warmup_s=0.5)["median_ms"] * 1e3 / L


class Layers:
    def __init__(self):
        r = lambda *s: (torch.randn(*s, device="cuda") / s[-1] ** 0.5).to(BF16)  # noqa: E731
        self.qkv = [r((H + 2) * D, W) for _ in range(L)]
        self.o = [r(W, H * D) for _ in range(L)]
        self.gu = [r(2 * I, W) for _ in range(L)]
        self.down = [r(W, I) for _ in range(L)]
        self.x = torch.randn(M, W, device="cuda")
        self.h = torch.randn(M, W, device="cuda").to(BF16)
        self.s1p = torch.rand(W, device="cuda") + 0.5
        self.gate = torch.rand(W, device="cuda") * 0.01
        self.qkv_shift = torch.zeros((H + 2) * D, device="cuda")
        self.gu_shift = torch.zeros(2 * I, device="cuda")
        self.cos, self.sin = fused.rope_tables(SEQ + M + 8, D, 10000.0, "cuda")
        self.pos = torch.arange(SEQ, SEQ + M, device="cuda", dtype=torch.int32)
        self.q = torch.empty(M * H, D, device="cuda", dtype=BF16)
        self.att = torch.randn(M * H, D, device="cuda").to(BF16)
        self.kc = [torch.randn(SEQ + M, D, device="cuda").to(BF16) for _ in range(L)]
        self.vc = [torch.randn(SEQ + M, D, device="cuda").to(BF16) for _ in range(L)]
        self.bias = torch.zeros(SEQ + M, device="cuda", dtype=BF16)
        self.act = torch.randn(M, I, device="cuda").to(BF16)
        self.gu_out = torch.randn(M, 2 * I, device="cuda").to(BF16)

    def qkv_rope(self, i, pdl=False):
        expert_layer.qkv_rope(self.x, self.s1p, self.qkv[i], self.qkv_shift, self.pos, self.cos, self.sin, self.q,
                              self.kc[i], self.vc[i], SEQ, H, D, 1e-6, pdl=pdl)

    def gate_up(self, i, pdl=False):
        expert_layer.gate_up_geglu(self.x, self.s1p, self.gu[i], self.gu_shift, self.act, 1e-6, pdl=pdl)

    def attend(self, i, pdl=False):
        fused.mqa_attention_split(self.q, self.kc[i], self.vc[i], self.bias, self.att, pdl=pdl)

    def o_proj(self, i, pdl=False):
        expert_layer.gated_residual(self.x, self.att.view(M, -1), self.o[i], self.gate, "o", pdl=pdl)

    def down_proj(self, i, pdl=False):
        expert_layer.gated_residual(self.x, self.act, self.down[i], self.gate, "down", pdl=pdl)

    def layer(self, i, pdl=False):
        for step in (self.qkv_rope, self.attend, self.o_proj, self.gate_up, self.down_proj):
            step(i, pdl)


def sweep_norm(lay, name, fn, runs, quick):
    rows = []
    space = [(128, 4, 3)] if quick else itertools.product((64, 128, 256), (4, 8), (2, 3, 4))
    saved = dict(expert_layer.TUNING[name])
    for bk, warps, stages in space:
        expert_layer.TUNING[name].update(BLOCK_K=bk, num_warps=warps, num_stages=stages)
        rows.append({"kernel": name, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages, "us": graph_us(fn, runs)})
    expert_layer.TUNING[name].update(saved)
    return rows


def sweep_skinny(lay, name, fn, runs, quick):
    rows = []
    space = [(64, 128, 256, 4, 3)] if quick else [(bn, 128, p, w, st) for bn in (32, 64, 128) for p in (128, 256, 512)
                                                   for w, st in ((4, 3), (4, 2), (8, 3))]
    saved = dict(expert_layer.TUNING[name])
    for bn, bk, progs, warps, stages in space:
        expert_layer.TUNING[name].update(block_n=bn, block_k=bk, programs=progs, num_warps=warps, num_stages=stages)
        rows.append({"kernel": name, "block_n": bn, "programs": progs, "num_warps": warps, "num_stages": stages,
                     "us": graph_us(fn, runs)})
    expert_layer.TUNING[name].update(saved)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=50, help="timed replays per variant (>= 50)")
    ap.add_argument("--out-dir", default="bench/results", help="where the JSON record goes")
    ap.add_argument("--quick", action="store_true", help="current launch shapes only (no sweep)")
    a = ap.parse_args()
    torch.manual_seed(0)
    lay = Layers()
    base = {
        "cuBLAS qkv (bf16 h)": lambda i: torch.mm(lay.h, lay.qkv[i].t()),
        "cuBLAS gate_up (bf16 h)": lambda i: torch.mm(lay.h, lay.gu[i].t()),
        "add_norm (per-GEMM path)": lambda i: fused.add_norm(lay.x, lay.h, scale=lay.s1p, shift=lay.s1p),
        "rope_qkv (per-GEMM path)": lambda i: fused.rope_qkv(lay.gu_out[:, :(H + 2) * D], lay.pos, lay.cos, lay.sin,
                                                             lay.q, lay.kc[i], lay.vc[i], SEQ, H, D),
        "attention split-KV (partials + combine)": lay.attend,
        "skinny down reading GeGLU (per-GEMM path)": lambda i: fused.skinny_linear(lay.gu_out, lay.down[i],
                                                                                   geglu_input=True),
    }
    reference = [{"kernel": k, "us": graph_us(fn, a.runs)} for k, fn in base.items()]
    sweeps = (sweep_norm(lay, "qkv", lay.qkv_rope, a.runs, a.quick) + sweep_norm(lay, "gate_up", lay.gate_up, a.runs, a.quick)
              + sweep_skinny(lay, "o", lay.o_proj, a.runs, a.quick) + sweep_skinny(lay, "down", lay.down_proj, a.runs, a.quick))
    best = {}
    for row in sweeps:
        if row["kernel"] not in best or row["us"] < best[row["kernel"]]["us"]:
            best[row["kernel"]] = row
    rep.print_table("reference kernels (us per launch, 18 layers' weights)", ["kernel", "us"],
                    [[r["kernel"], r["us"]] for r in reference])
    rep.print_table("fused expert kernels: launch shape sweep (us per launch)", ["kernel", "shape", "us"],
                    [[r["kernel"], ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("kernel", "us")), r["us"]]
                     for r in sweeps])
    for name, row in best.items():   # the chain runs with the best shapes found
        expert_layer.TUNING[name].update({k: v for k, v in row.items() if k not in ("kernel", "us")})
    chain = []
    for label, pdl, prefetch in (("no PDL", False, False), ("PDL, no prefetch", True, False), ("PDL + L2 prefetch", True, True)):
        if pdl and not fused.pdl_supported():
            continue
        expert_layer.PREFETCH["on"] = prefetch
        chain.append({"chain": label, "us_per_layer": graph_us(lambda i, pdl=pdl: lay.layer(i, pdl), a.runs)})
    expert_layer.PREFETCH["on"] = True
    rep.print_table("fused layer chain (5 wrappers, 6 launches; us per layer, best shapes)", ["chain", "us per layer"],
                    [[c["chain"], c["us_per_layer"]] for c in chain])
    record = {**rep.stamp(" ".join(sys.argv)), "shapes": {"rows": M, "width": W, "heads": H, "head_dim": D, "mlp": I,
                                                          "layers": L, "keys": SEQ + M},
              "reference": reference, "sweep": sweeps, "best": best, "chain": chain}
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", record["device"]["gpu"] or "gpu").strip("-").lower()
    print("recorded:", rep.write_json(Path(a.out_dir) / f"expert_kernels-{gpu}-{record['date'][:10]}.json", record))


if __name__ == "__main__":
    main()
