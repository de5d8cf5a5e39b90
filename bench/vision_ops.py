#!/usr/bin/env python3
"""SigLIP-layer alternatives at the standard workload (2 views x 256 tokens, width 1152, 16 heads of 72): the
attention backends, and fc1 + GELU as a cuBLASLt epilogue against addmm then the engine's GELU kernel. Each variant
is a CUDA graph of 20 calls (launch overhead out, as in the engine); device events after warm-up, median us per
call; each row's result checked against the first. Prints tables and records
bench/results/vision_ops-<gpu>-<date>.json."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.report import print_table  # noqa: E402
from triforce.runtime import fused  # noqa: E402
from triforce.timing import time_graph_us  # noqa: E402

V, T, H, D, W, I = 2, 256, 16, 72, 1152, 4304
CALLS = 20


def graph_us(fn) -> float:
    return time_graph_us([fn] * CALLS)


def main():
    out_dir = rep.bench_parser(__doc__).parse_args().out_dir
    torch.manual_seed(0)
    qkv = torch.randn(V, T, 3, H, D, device="cuda", dtype=torch.bfloat16).permute(2, 0, 3, 1, 4)
    rows, ref = [], None
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
                us = graph_us(lambda: F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]))
            ref = out if ref is None else ref
            rows.append([name, us, float((out.float() - ref.float()).abs().max())])
        except RuntimeError as err:
            rows.append([name, f"unsupported: {str(err)[:50]}", ""])
    print_table("vision attention [2, 16, 256, 72] (us)", ["backend", "median us", "max abs diff vs first"], rows)
    attention = {r[0]: r[1] for r in rows}
    x = torch.randn(V * T, W, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(I, W, device="cuda", dtype=torch.bfloat16) / W ** 0.5
    b = torch.randn(I, device="cuda", dtype=torch.bfloat16)
    act = torch.empty(V * T, I, device="cuda", dtype=torch.bfloat16)
    two = lambda: fused.gelu(torch.addmm(b, x, w.t()), act)  # noqa: E731
    one = lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True)  # noqa: E731
    ref = two().float()
    rows = [[name, graph_us(fn), float((fn().float() - ref).abs().max() / ref.abs().max())] for name, fn in
            (("addmm + gelu kernel", two), ("cuBLASLt GELU epilogue", one))]
    print_table("vision fc1 + GELU [512 x 1152 -> 4304] (us)", ["variant", "median us", "max rel diff vs first"], rows)
    rep.record_run(out_dir, "vision_ops", {"unit": f"us per call, CUDA graph of {CALLS} calls", "attention_2x16x256x72": attention,
                     "fc1_gelu_512x1152x4304": {r[0]: r[1] for r in rows}})


if __name__ == "__main__":
    main()
