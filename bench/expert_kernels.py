#!/usr/bin/env python3
"""The denoise step's expert-layer launches at pi05_libero shapes (10 rows), each timed alone and as the layer chain.

18 distinct weight sets, like the 18 layers (623 MB: nothing stays in L2 between replays). Every entry is a CUDA graph
of 18 launches, one per layer; us per launch = replay median (device events, after warm-up) / 18. Sweeps the launch
shapes of the few-row kernels (skinny o/down, split-KV attention, QKV + RoPE and gate/up + GeGLU against the cuBLAS
GEMM + kernel pair they replace), then times the engine's per-layer sequence on both expert paths (fused_epilogue,
per_op) and the end-of-step kernel's launch shapes; last, the fused_epilogue chain (bf16, and W4A16 as Plan B runs it)
and a chain of norms under each denoise launch mode (engine.DENOISE_LAUNCHES: plain, programmatic dependent launch),
each captured inside its mode. (Session 6 also timed a third mode, each kernel prefetching its weights into L2 before
its wait: slower, removed; expert_layer-*-s6-launch-modes*.json. Session 7 timed the chains with o reading the
split-KV partials instead of a combine launch: bf16 37.5 vs 31.7 us, W4A16 34.5 vs 25.0 us a layer under dependent
launches, removed; expert_layer-*-s7-fused-combine.json.)
Prints tables and records bench/results/expert_layer-<gpu>-<date>.json.
    python3 bench/expert_kernels.py [--runs 50] [--launch-modes-only] [--out-dir bench/results]"""

import contextlib

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.quant import formats as fm  # noqa: E402
from triforce.runtime import fused  # noqa: E402
from triforce.runtime.engine import DENOISE_LAUNCHES  # noqa: E402
from triforce.timing import time_graph_us  # noqa: E402

M, W, H, D, I, L, SEQ = 10, 1024, 8, 256, 4096, 18, 528
ROPE_BASE = 10000.0
BF16 = torch.bfloat16


# launch shapes swept for the two fused-epilogue kernels (the first of each is the engine's default)
FEW_ROW_SHAPES = {
    "qkv_rope": [{"pairs": p, "block_k": bk, "num_warps": w, "num_stages": st} for p, bk, w, st in
                 ((16, 128, 4, 4), (16, 256, 4, 3), (8, 128, 4, 4), (16, 128, 4, 3), (16, 128, 8, 4), (32, 128, 4, 4),
                  (32, 256, 4, 3), (16, 64, 4, 6))],
    "gate_up_geglu": [{"pairs": p, "block_k": bk, "num_warps": w, "num_stages": st} for p, bk, w, st in
                      ((16, 128, 4, 4), (32, 256, 4, 3), (32, 128, 4, 4), (16, 256, 4, 3), (16, 128, 8, 4),
                       (32, 128, 8, 4), (16, 64, 4, 6), (64, 128, 8, 4))],
    # W4A16 (block_k is the int4 group, 128)
    "int4": [{"pairs": p, "num_warps": w, "num_stages": st} for p, w, st in
             ((16, 4, 3), (8, 4, 3), (32, 4, 3), (16, 4, 2), (16, 4, 4), (16, 8, 3), (32, 8, 3))],
}


def sweep_entry(kernel, shape, fn, runs):
    """One swept launch shape; a shape that does not compile or launch is recorded with its error, not fatal."""
    try:
        return {"kernel": kernel, "shape": shape, "us": graph_us(fn, runs)}
    except Exception as err:       # noqa: BLE001 (e.g. out of shared memory at this tile size)
        torch.cuda.synchronize()
        return {"kernel": kernel, "shape": shape, "error": str(err).splitlines()[0][:200]}


def graph_us(fn, runs):
    """us per layer of fn(layer) launched for all 18 layers inside one captured graph."""
    return time_graph_us([lambda i=i: fn(i) for i in range(L)], runs=runs, warmup_s=0.5)


class Layers:
    """Random expert-layer weights and the step's buffers (fp32 residual x, bf16 activations, K/V caches)."""

    def __init__(self):
        r = lambda *s: (torch.randn(*s, device="cuda") / s[-1] ** 0.5).to(BF16)  # noqa: E731
        self.qkv, self.o = [r((H + 2) * D, W) for _ in range(L)], [r(W, H * D) for _ in range(L)]
        self.gu, self.down = [r(2 * I, W) for _ in range(L)], [r(W, I) for _ in range(L)]
        self.x = torch.randn(M, W, device="cuda")
        self.h = torch.randn(M, W, device="cuda").to(BF16)
        self.scale, self.gate = torch.rand(W, device="cuda") + 0.5, torch.rand(W, device="cuda") * 1e-3
        self.cos, self.sin = fused.rope_tables(SEQ + M + 8, D, ROPE_BASE, "cuda")
        self.pos = torch.arange(SEQ, SEQ + M, device="cuda", dtype=torch.int32)
        self.q, self.att = torch.empty(M * H, D, device="cuda", dtype=BF16), torch.empty(M * H, D, device="cuda", dtype=BF16)
        self.kc = [torch.randn(SEQ + M, D, device="cuda").to(BF16) for _ in range(L)]
        self.vc = [torch.randn(SEQ + M, D, device="cuda").to(BF16) for _ in range(L)]
        self.bias = torch.zeros(SEQ + M, device="cuda", dtype=BF16)
        self.qkv_out = torch.randn(M, (H + 2) * D, device="cuda").to(BF16)
        self.gu_out = torch.randn(M, 2 * I, device="cuda").to(BF16)
        self.act = torch.randn(M, I, device="cuda").to(BF16)
        self.qkv4 = [fm.quantize_int4_g128(w.float()) for w in self.qkv]     # Plan B's W4A16 expert
        self.gu4 = [fm.quantize_int4_g128(w.float()) for w in self.gu]
        self.o4 = [fm.quantize_int4_g128(w.float()) for w in self.o]
        self.down4 = [fm.quantize_int4_g128(w.float()) for w in self.down]
        self.qkv_acc, self.gu_acc = torch.zeros(M, (H + 2) * D, device="cuda"), torch.zeros(M, 2 * I, device="cuda")

    def qkv_per_op(self, i):
        torch.mm(self.h, self.qkv[i].t(), out=self.qkv_out)
        fused.rope_qkv(self.qkv_out, self.pos, self.cos, self.sin, self.q, self.kc[i], self.vc[i], SEQ, H, D)

    def qkv_rope(self, i, **shape):
        fused.qkv_rope(self.h, self.qkv[i], self.pos, self.cos, self.sin, self.q, self.kc[i], self.vc[i], SEQ, H, D,
                       **shape)

    def qkv_int4_per_op(self, i):
        """Plan B's per_op W4A16 QKV: the split-K kernel into fp32 (the engine's zeroed arena), then RoPE."""
        fused.rope_qkv(fused.skinny_w4a16(self.h, *self.qkv4[i], out=self.qkv_acc), self.pos, self.cos, self.sin,
                       self.q, self.kc[i], self.vc[i], SEQ, H, D)

    def gate_up_int4_per_op(self, i):
        fused.geglu(fused.skinny_w4a16(self.h, *self.gu4[i], out=self.gu_acc), self.act)

    def gate_up_per_op(self, i):
        torch.mm(self.h, self.gu[i].t(), out=self.gu_out)
        fused.geglu(self.gu_out, self.act)

    def launches_int4(self):
        """The fused_epilogue layer on W4A16 weights (Plan B's expert: all four GEMMs int4)."""
        return [("add_norm", lambda i: fused.add_norm(self.x, self.h, scale=self.scale, shift=self.scale)),
                ("QKV + RoPE int4", lambda i: fused.qkv_rope(self.h, self.qkv4[i][0], self.pos, self.cos, self.sin,
                                                             self.q, self.kc[i], self.vc[i], SEQ, H, D,
                                                             scales=self.qkv4[i][1])),
                ("attention", lambda i: fused.mqa_attention_split(self.q, self.kc[i], self.vc[i], self.bias, self.att)),
                ("o int4", lambda i: fused.skinny_w4a16(self.att.view(M, -1), *self.o4[i], out=self.x, gate=self.gate)),
                ("add_norm", lambda i: fused.add_norm(self.x, self.h, scale=self.scale, shift=self.scale)),
                ("gate/up + GeGLU int4", lambda i: fused.gate_up_geglu(self.h, self.gu4[i][0], self.act,
                                                                       scales=self.gu4[i][1])),
                ("down int4", lambda i: fused.skinny_w4a16(self.act, *self.down4[i], out=self.x, gate=self.gate))]

    def launches(self, path="fused_epilogue", attn=None, o=None, down=None):
        """The engine's per-layer sequence (engine.py _denoise_step, bf16) on an expert path, as (name, fn(layer))
        pairs."""
        attn, o, down = attn or {}, o or {}, down or {}
        if path == "fused_epilogue":
            qkv = [("QKV + RoPE + K/V cache write", self.qkv_rope)]
            gate_up = [("gate/up + GeGLU", lambda i: fused.gate_up_geglu(self.h, self.gu[i], self.act))]
        else:
            qkv = [("qkv (cuBLAS)", lambda i: torch.mm(self.h, self.qkv[i].t(), out=self.qkv_out)),
                   ("RoPE + K/V cache write", lambda i: fused.rope_qkv(self.qkv_out, self.pos, self.cos, self.sin,
                                                                       self.q, self.kc[i], self.vc[i], SEQ, H, D))]
            gate_up = [("gate/up (cuBLAS)", lambda i: torch.mm(self.h, self.gu[i].t(), out=self.gu_out)),
                       ("GeGLU", lambda i: fused.geglu(self.gu_out, self.act))]
        norm = ("add_norm (adaRMS)", lambda i: fused.add_norm(self.x, self.h, scale=self.scale, shift=self.scale))
        return [norm, *qkv,
                ("attention (split-KV + combine)", lambda i: fused.mqa_attention_split(self.q, self.kc[i], self.vc[i],
                                                                                       self.bias, self.att, **attn)),
                ("o into the residual (skinny)", lambda i: fused.skinny_linear(self.att.view(M, -1), self.o[i],
                                                                               out=self.x, gate=self.gate, **o)),
                norm, *gate_up,
                ("down into the residual (skinny)", lambda i: fused.skinny_linear(self.act, self.down[i], out=self.x,
                                                                                  gate=self.gate, **down))]


def launch_context(mode):
    """What the engine's later denoise steps launch inside (engine.Pi05Engine._launches)."""
    return fused.dependent_launches() if mode == "dependent" else contextlib.nullcontext()


def chain(launches, mode):
    """fn(layer) launching a layer's sequence as the engine does under `mode`."""
    def run(i):
        with launch_context(mode):
            for _, fn in launches:
                fn(i)
    return run


def launch_modes(lay, runs):
    """us per layer of the fused_epilogue chain (bf16 and int4) and us per launch of a chain of 18 norms, under each
    denoise launch mode, with its ratio to plain."""
    chains = {"fused_epilogue chain, bf16": lambda mode: chain(lay.launches("fused_epilogue"), mode),
              "fused_epilogue chain, W4A16": lambda mode: chain(lay.launches_int4(), mode),
              "add_norm alone (18 in a row)": lambda mode: chain(lay.launches()[:1], mode)}
    out = {mode: {name: graph_us(make(mode), runs) for name, make in chains.items()} for mode in DENOISE_LAUNCHES}
    rep.print_table("denoise launch modes (us per layer / per launch; x: plain over the mode)",
                    ["chain", *DENOISE_LAUNCHES, *(f"x {m}" for m in DENOISE_LAUNCHES if m != "plain")],
                    [[name, *(out[m][name] for m in DENOISE_LAUNCHES),
                      *(out["plain"][name] / out[m][name] for m in DENOISE_LAUNCHES if m != "plain")] for name in chains])
    return out


def main():
    ap = rep.bench_parser(__doc__, runs=True)
    ap.add_argument("--launch-modes-only", action="store_true", help="time only the denoise launch modes")
    a = ap.parse_args()
    torch.manual_seed(0)
    lay = Layers()
    if a.launch_modes_only:
        rep.record_run(a.out_dir, "expert_layer", {"launch_modes_us": launch_modes(lay, a.runs),
                                                   "shapes": {"rows": M, "layers": L, "keys": SEQ + M}})
        return
    sweep = []
    for bm, bn in ((16, 64), (16, 32), (32, 64), (16, 128)):
        sweep.append({"kernel": "attention", "shape": {"block_m": bm, "block_n": bn},
                      "us": graph_us(lambda i: lay.launches(attn={"block_m": bm, "block_n": bn})[2][1](i), a.runs)})
    for name, idx in (("o", 3), ("down", 6)):
        for bn, progs, stages in ((32, 256, 3), (32, 512, 2), (64, 256, 3), (16, 256, 3), (32, 128, 3)):
            shape = {"block_n": bn, "programs": progs, "num_stages": stages}
            sweep.append({"kernel": name, "shape": shape,
                          "us": graph_us(lambda i: lay.launches(**{name: shape})[idx][1](i), a.runs)})
    sweep.append({"kernel": "qkv", "shape": {"cuBLAS + rope_qkv": 2}, "us": graph_us(lay.qkv_per_op, a.runs)})
    for shape in FEW_ROW_SHAPES["qkv_rope"]:
        sweep.append(sweep_entry("qkv", shape, lambda i, shape=shape: lay.qkv_rope(i, **shape), a.runs))
    sweep.append({"kernel": "gate/up", "shape": {"cuBLAS + geglu": 2}, "us": graph_us(lay.gate_up_per_op, a.runs)})
    for shape in FEW_ROW_SHAPES["gate_up_geglu"]:
        sweep.append(sweep_entry("gate/up", shape, lambda i, shape=shape: fused.gate_up_geglu(lay.h, lay.gu[i], lay.act,
                                                                                              **shape), a.runs))
    sweep.append({"kernel": "qkv int4", "shape": {"skinny_w4a16 + rope_qkv": 2}, "us": graph_us(lay.qkv_int4_per_op, a.runs)})
    for shape in FEW_ROW_SHAPES["int4"]:
        sweep.append(sweep_entry("qkv int4", shape, lambda i, shape=shape: fused.qkv_rope(
            lay.h, lay.qkv4[i][0], lay.pos, lay.cos, lay.sin, lay.q, lay.kc[i], lay.vc[i], SEQ, H, D,
            scales=lay.qkv4[i][1], **shape), a.runs))
    sweep.append({"kernel": "gate/up int4", "shape": {"skinny_w4a16 + geglu": 2},
                  "us": graph_us(lay.gate_up_int4_per_op, a.runs)})
    for shape in FEW_ROW_SHAPES["int4"]:
        sweep.append(sweep_entry("gate/up int4", shape, lambda i, shape=shape: fused.gate_up_geglu(
            lay.h, lay.gu4[i][0], lay.act, scales=lay.gu4[i][1], **shape), a.runs))
    rep.print_table("few-row launch shapes (us per launch; qkv and gate/up: the cuBLAS pair, then the fused kernel)",
                    ["kernel", "shape", "us"],
                    [[r["kernel"], ", ".join(f"{k}={v}" for k, v in r["shape"].items()), r.get("us", r.get("error"))]
                     for r in sweep])
    floor_us = sum(t.numel() * 2 for t in (lay.qkv[0], lay.o[0], lay.gu[0], lay.down[0])) / 3.0e12 * 1e6
    per_launch, chain = {}, {}
    for path in ("fused_epilogue", "per_op"):
        per_launch[path] = [{"launch": name, "us": graph_us(fn, a.runs)} for name, fn in lay.launches(path)]
        chain[path] = graph_us(lambda i: [fn(i) for _, fn in lay.launches(path)], a.runs)
        rep.print_table(f"the engine's expert layer, {path} path, default shapes (us per launch)", ["launch", "us"],
                        [[r["launch"], r["us"]] for r in per_launch[path]]
                        + [["sum of launches", sum(r["us"] for r in per_launch[path])],
                           ["chain (one graph)", chain[path]], ["bf16 weight-read floor at 3.0 TB/s", floor_us]])
    print(f"chain per layer: fused_epilogue {chain['fused_epilogue']:.2f} us, per_op {chain['per_op']:.2f} us "
          f"({chain['per_op'] / chain['fused_epilogue']:.3f}x)")
    lay.x_t, lay.x_next = torch.randn(M, 32, device="cuda"), torch.empty(M, W, device="cuda")
    lay.w_out, lay.w_in = torch.randn(32, W, device="cuda") / 32, torch.randn(W, 32, device="cuda") / 6
    lay.b_out, lay.b_in = torch.randn(32, device="cuda"), torch.randn(W, device="cuda")
    lay.x_t_new = torch.empty_like(lay.x_t)
    tail = [{"blocks": b, "us": graph_us(lambda i, b=b: fused.euler_tail(
        lay.x, lay.scale, lay.scale, lay.w_out, lay.b_out, lay.x_t, lay.x_t_new, -0.1, lay.w_in, lay.b_in, lay.x_next,
        blocks=b), a.runs)} for b in (1, 2, 4, 8, 16)]
    rep.print_table("end of a denoise step (euler_tail), us", ["programs a row", "us"],
                    [[t["blocks"], t["us"]] for t in tail])
    modes = launch_modes(lay, a.runs)
    rep.record_run(a.out_dir, "expert_layer", {
        "launch_modes_us": modes, "shapes": {"rows": M, "width": W, "heads": H, "head_dim": D, "mlp": I, "layers": L, "keys": SEQ + M},
        "sweep": sweep, "per_launch": per_launch, "chain_us_per_layer": chain,
        "ratio_per_op_over_fused_epilogue": chain["per_op"] / chain["fused_epilogue"], "weight_floor_us": floor_us,
        "euler_tail": tail})


if __name__ == "__main__":
    main()
