"""The expert's W4A16 projection + the adaRMS norm after it in one cluster launch (the wheel's w4a16_cluster_norm)
against the split form (the few-row kernel adding into the residual, then the Triton add_norm), each in the context it
has in the denoise chain: a CUDA graph of 18 layers under programmatic dependent launch with the chain's carveout,
  o:    cluster attention (80 rows x 538 keys) -> o (K 2048) [-> add_norm]
  down: gate/up + GeGLU (few-row kernel, 8 stages)  -> down (K 4096) [-> add_norm]
device events after warm-up, median us per layer, the ratio in the same run. Then one replay of the fold chains with
each CTA's %globaltimer stamps (the kernel's trace): when its weights land and each phase ends, relative to the
first CTA released by its chain wait, medians over the 18 launches (where the fold spends its time).
    python3 bench/with_devbuild.py bench/norm_fold.py [--out-dir bench/results]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.quant import formats  # noqa: E402
from triforce.runtime import fused  # noqa: E402
from triforce.runtime.engine import CHAIN_CARVEOUT  # noqa: E402
from triforce.timing import time_graph_us  # noqa: E402

M, WIDTH, INTER, HEADS, D, PREFIX, LAYERS = 10, 1024, 4096, 8, 256, 528, 18
STAMPS = ("start", "released", "weights in", "K loop done", "K parts met", "sums received", "end")


def _w4a16(n, k, gen, interleave=False):
    q, s = formats.quantize_int4_g128(torch.randn(n, k, device="cuda", generator=gen) * 0.02)
    if interleave:
        q, s = formats.interleave_gate_up(q), formats.interleave_gate_up(s)
    return formats.pack_int4_fragments(q), formats.pack_scales_fragments(s)


def chains(tk, gen):
    """name -> (per-layer calls builder taking a trace row or None, traced)."""
    x = torch.randn(M, WIDTH, device="cuda", generator=gen)
    vec = [torch.randn(WIDTH, device="cuda", generator=gen) * 0.1 for _ in range(3)]
    gate, scale, shift = vec
    h = torch.randn(M, WIDTH, device="cuda", generator=gen).bfloat16()
    act = torch.empty(M, INTER, dtype=torch.bfloat16, device="cuda")
    q = torch.randn(M * HEADS, D, device="cuda", generator=gen).bfloat16()
    k, v = (torch.randn(PREFIX + M, D, device="cuda", generator=gen).bfloat16() for _ in range(2))
    bias = torch.zeros(PREFIX + M, dtype=torch.bfloat16, device="cuda")
    att = torch.empty(M * HEADS, D, dtype=torch.bfloat16, device="cuda")
    gu = [_w4a16(2 * INTER, WIDTH, gen, interleave=True) for _ in range(LAYERS)]
    down = [_w4a16(WIDTH, INTER, gen) for _ in range(LAYERS)]
    o = [_w4a16(WIDTH, HEADS * D, gen) for _ in range(LAYERS)]
    att2 = att.view(M, HEADS * D)

    def attention():
        tk.mqa_cluster_attention(q, k, v, bias, att, static_keys=PREFIX, dependent=True)

    def geglu(i):
        tk.w4a16_skinny_geglu(h, *gu[i], act, dependent=True, stages=8)

    def add_norm():
        fused.add_norm(x, h, scale=scale, shift=shift)

    return {
        "o, split (few-row o + add_norm)": lambda i, tr: [attention, lambda: tk.w4a16_skinny(
            att2, *o[i], x, gate, dependent=True), add_norm],
        "o, fold (w4a16_cluster_norm)": lambda i, tr: [attention, lambda: tk.w4a16_cluster_norm(
            att2, *o[i], x, gate, scale, shift, h, 1e-6, dependent=True, trace=tr)],
        "down, split (few-row down + add_norm)": lambda i, tr: [lambda: geglu(i), lambda: tk.w4a16_skinny(
            act, *down[i], x, gate, dependent=True), add_norm],
        "down, fold (w4a16_cluster_norm)": lambda i, tr: [lambda: geglu(i), lambda: tk.w4a16_cluster_norm(
            act, *down[i], x, gate, scale, shift, h, 1e-6, dependent=True, trace=tr)],
    }


def trace_summary(stamps: np.ndarray) -> dict:
    """stamps [launches, CTAs, 7] ns -> medians over launches of each phase's last CTA, us after the first release."""
    rel = stamps[:, :, 1].min(axis=1, keepdims=True)
    last = (stamps - rel[:, :, None]).max(axis=1) / 1e3            # [launches, 7]
    first = (stamps - rel[:, :, None]).min(axis=1) / 1e3
    out = {f"{name} (last CTA)": float(np.median(last[:, i])) for i, name in enumerate(STAMPS)}
    out["start (first CTA)"] = float(np.median(first[:, 0]))
    ends = stamps[:, :, 6].max(axis=1)
    out["layer period"] = float(np.median(np.diff(ends)) / 1e3)
    return out


def main():
    import triforce_kernels as tk

    out_dir = rep.bench_parser(__doc__).parse_args().out_dir
    gen = torch.Generator(device="cuda").manual_seed(0)
    built = chains(tk, gen)
    results, rows = {}, []
    with fused.dependent_launches():
        ones = torch.ones(WIDTH, device="cuda")           # add_norm's chain form compiled before the carveout is set
        fused.add_norm(torch.zeros(M, WIDTH, device="cuda"), torch.empty(M, WIDTH, dtype=torch.bfloat16,
                       device="cuda"), scale=ones, shift=ones)
        fused.set_chain_carveout(CHAIN_CARVEOUT)
        tk.set_chain_carveout(CHAIN_CARVEOUT)
        for name, layer in built.items():
            calls = [c for i in range(LAYERS) for c in layer(i, None)]
            us = time_graph_us(calls) * len(calls) / LAYERS
            results[name] = {"us_per_layer": us}
        ctas = WIDTH // 64 * ((M + 7) // 8)
        for name, layer in built.items():
            if "fold" not in name:
                continue
            trace = torch.zeros(LAYERS, ctas, 8, dtype=torch.int64, device="cuda")
            calls = [c for i in range(LAYERS) for c in layer(i, trace[i])]
            graph, side = torch.cuda.CUDAGraph(), torch.cuda.Stream()
            with torch.cuda.stream(side):
                for c in calls:
                    c()
                with torch.cuda.graph(graph, stream=side):
                    for c in calls:
                        c()
            for _ in range(3):
                graph.replay()
            torch.cuda.synchronize()
            results[name]["trace_us"] = trace_summary(trace[:, :, :7].cpu().numpy().astype(np.float64))
    for proj in ("o", "down"):
        split, fold = results[f"{proj}, split (few-row {proj} + add_norm)"], results[f"{proj}, fold (w4a16_cluster_norm)"]
        fold["speedup_vs_split"] = split["us_per_layer"] / fold["us_per_layer"]
        rows += [[f"{proj}: split", split["us_per_layer"], 1.0], [f"{proj}: fold", fold["us_per_layer"],
                                                                   fold["speedup_vs_split"]]]
    rep.print_table(f"projection + norm, {LAYERS} layers a graph, dependent launches (us per layer incl. the kernel "
                    f"before)", ["chain", "us per layer", "x vs split"], rows)
    for name, r in results.items():
        if "trace_us" in r:
            rep.print_table(f"{name}: phases, us after the first CTA's release (median over launches)",
                            ["phase", "us"], [[k, v] for k, v in r["trace_us"].items()])
    rep.record_run(out_dir, "norm_fold", {"unit": "us per layer (the kernel before included), CUDA graph of 18",
                                          "shape": {"rows": M, "width": WIDTH, "inter": INTER, "heads": HEADS},
                                          "chains": results})


if __name__ == "__main__":
    main()
