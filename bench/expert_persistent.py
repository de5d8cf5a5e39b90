#!/usr/bin/env python3
"""The persistent expert layer (runtime/expert_layer.py) against the per-op layer at pi05_libero shapes (10 rows).

1. Correctness on the GPU: one layer, all phases in one launch and phase by phase, against the fp32 formula.
2. us per layer in one CUDA graph of 18 layers with distinct weights (nothing stays in L2): persistent (1 launch),
   its phases as separate launches, and the per-op chain (10 launches, bench/expert_kernels.py), in the same run.
3. A sweep of the units' tiles and the launch's warps/stages; 4. each phase alone.
Records bench/results/expert_persistent-<gpu>-<date>.json.
    python3 bench/expert_persistent.py [--runs 50] [--out-dir bench/results]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from expert_kernels import BF16, ROPE_BASE, SEQ, D, H, I, L, M, W, Layers, graph_us  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.runtime import expert_layer as el  # noqa: E402
from triforce.timing import time_graph_us  # noqa: E402

EPS = 1e-6


class Persistent:
    """The 18 layers' weights of `Layers` driven through expert_layer, with the step's ada vectors and a mask."""

    def __init__(self, lay: Layers):
        self.lay = lay
        ada = lambda: (torch.rand(W, device="cuda") + 0.5, torch.randn(W, device="cuda") * 0.1,  # noqa: E731
                       torch.randn(W, device="cuda") * 0.3)
        self.ada = [(ada(), ada()) for _ in range(L)]      # (1 + scale, shift, gate) per norm, as the engine has them
        self.ada_through = [((s1, el.shift_through(lay.qkv[i], b1), g1), (s2, el.shift_through(lay.gu[i], b2), g2))
                            for i, ((s1, b1, g1), (s2, b2, g2)) in enumerate(self.ada)]
        valid = torch.ones(SEQ + M, dtype=torch.bool, device="cuda")
        valid[SEQ - 6:SEQ] = False                     # prompt padding: masked keys
        self.bias = torch.zeros(SEQ + M, dtype=BF16, device="cuda").masked_fill_(~valid, float("-inf"))
        self.pos = (valid[:SEQ].sum() + torch.arange(M, device="cuda")).int()
        self.x = torch.randn(M, W, device="cuda")
        self.scratch = el.ExpertScratch.allocate(M, W, SEQ + M, H, D, I, L, "cuda")

    def args(self, i, through=True):
        ada = self.ada_through[i] if through else self.ada[i]
        return (ada[0], ada[1], self.lay.qkv[i], self.lay.o[i], self.lay.gu[i], self.lay.down[i],
                self.lay.kc[i], self.lay.vc[i], self.bias, self.pos, self.lay.cos, self.lay.sin, SEQ)

    def layer(self, x, i, phase=None, **shape):
        return el.expert_layer(x, *self.args(i), self.scratch, EPS, H, D, phase=phase, **shape)

    def all_layers(self, phases=None, programs=None, key_block=el.KEY_BLOCK, **shape):
        """One graph's worth: the barrier counters zeroed, then the 18 layers (each one launch, or `phases`)."""
        programs = programs or el.PROGRAMS_PER_SM * torch.cuda.get_device_properties(0).multi_processor_count
        if (programs, key_block) != (self.scratch.programs, self.scratch.key_block):
            self.scratch = el.ExpertScratch.allocate(M, W, SEQ + M, H, D, I, L, "cuda", programs=programs, key_block=key_block)
        self.scratch.launches = 0
        self.scratch.barriers.zero_()
        for i in range(L):
            if phases is None:
                self.layer(self.x, i, **shape)
            else:
                for p in phases:
                    self.layer(self.x, i, phase=p, **shape)


def correctness(pe: Persistent) -> list:
    rows = []
    for mode in ("one launch", "phase by phase"):
        x0 = torch.randn(M, W, device="cuda")
        ada1, ada2, *weights, kc, vc, bias, pos, _, _, seq = pe.args(0, through=False)
        ref = el.reference_layer(x0.clone(), ada1, ada2, *weights, kc, vc, bias, pos, ROPE_BASE, seq, EPS, H, D)
        x = x0.clone()
        pe.scratch.launches = 0
        pe.scratch.barriers.zero_()
        if mode == "one launch":
            pe.layer(x, 0)
        else:
            for p in range(el.PHASES):
                pe.layer(x, 0, phase=p)
        torch.cuda.synchronize()
        err = float((x - ref).abs().max() / ref.abs().max())
        delta_cos = float(torch.nn.functional.cosine_similarity((x - x0).flatten(), (ref - x0).flatten(), dim=0))
        rows.append({"mode": mode, "max_rel_err": err, "update_cosine": delta_cos, "ok": err < 2e-2 and delta_cos > 0.999})
    return rows


def compiled_stats() -> list:
    """Shared memory, registers, spills and async copies (the compiler's pipelining) of the compiled variants."""
    out = []
    try:
        for caches in el._expert_layer_kernel.device_caches.values():
            for k in caches[0].values():
                k._init_handles()
                out.append({"shared": k.metadata.shared, "regs": k.n_regs, "spills": k.n_spills,
                            "async_copies": k.asm["ttgir"].count("async_copy")})
    except Exception as err:          # a diagnostic only: Triton's cache layout differs between versions
        out.append(f"unavailable: {err}")
    return out


def us_per_layer(fn, runs):
    return time_graph_us([fn], runs=runs, warmup_s=0.5) / L


def main():
    a = rep.bench_parser(__doc__, runs=True).parse_args()
    torch.manual_seed(0)
    lay = Layers()
    pe = Persistent(lay)
    checks = correctness(pe)
    rep.print_table("persistent expert layer vs the fp32 formula (one layer)", ["mode", "max rel err", "update cos", "ok"],
                    [[c["mode"], c["max_rel_err"], c["update_cosine"], c["ok"]] for c in checks])
    per_op = graph_us(lambda i: [fn(i) for _, fn in lay.launches()], a.runs)    # expert_kernels.py's chain
    persistent = us_per_layer(pe.all_layers, a.runs)
    phased = us_per_layer(lambda: pe.all_layers(phases=range(el.PHASES)), a.runs)
    floor_us = sum(t.numel() * 2 for t in (lay.qkv[0], lay.o[0], lay.gu[0], lay.down[0])) / 3.0e12 * 1e6
    rep.print_table("us per expert layer (one graph of 18 layers)", ["path", "us", "vs per-op"],
                    [["per-op (10 launches)", per_op, 1.0], ["persistent (1 launch)", persistent, per_op / persistent],
                     [f"{el.PHASES} phase launches", phased, per_op / phased], ["bf16 weight floor at 3.0 TB/s", floor_us, ""]])
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    variants = [{}, {"programs": sms}, {"key_block": 64}, {"tiles": {"down": (32, 256)}}, {"tiles": {"gate_up": (32, 128)}},
                {"tiles": {"o": (32, 128)}}, {"tiles": {"qkv": (16, 256)}}, {"num_warps": 8, "programs": sms}]
    sweep = []
    for v in variants:
        try:
            us = us_per_layer(lambda: pe.all_layers(**v), a.runs)
        except Exception as err:     # a shape that does not compile is a sweep result, not the end of the run
            us = f"failed: {str(err).splitlines()[0][:80]}"
        sweep.append({"variant": v, "us": us})
        print("sweep:", v, us, flush=True)
    rep.print_table("launch-shape sweep (persistent, us per layer; default above)", ["variant", "us"],
                    [[str(s["variant"]), s["us"]] for s in sweep])
    best = min((s for s in sweep if isinstance(s["us"], float)), key=lambda s: s["us"], default={"variant": {}})
    phases = [{"phase": p, "us": us_per_layer(lambda p=p: pe.all_layers(phases=[p], **best["variant"]), a.runs)}
              for p in range(el.PHASES)]
    barriers = [{"variant": v, "us": us_per_layer(lambda v=v: pe.all_layers(phases=[-2], **v), a.runs)}
                for v in ({}, {"programs": sms})]
    rep.print_table(f"barriers only ({el.PHASES - 1} per layer, us per layer)", ["variant", "us"],
                    [[str(b["variant"]), b["us"]] for b in barriers])
    rep.print_table(f"each phase alone, {best['variant']} (us per launch)", ["phase", "us"], [[p["phase"], p["us"]] for p in phases])
    stats = compiled_stats()
    print("compiled kernel variants:", stats)
    rep.record_run(a.out_dir, "expert_persistent", {
        "shapes": {"rows": M, "width": W, "heads": H, "head_dim": D, "mlp": I, "layers": L, "keys": SEQ + M},
        "correctness": checks,
        "us_per_layer": {"per_op": per_op, "persistent": persistent, "phase_launches": phased, "weight_floor": floor_us},
        "ratio_per_op_over_persistent": per_op / persistent, "default_tiles": el.TILES, "sweep": sweep,
        "phases": phases, "barriers_only": barriers, "compiled": stats})
    sys.exit(0 if all(c["ok"] for c in checks) else 1)


if __name__ == "__main__":
    main()
