#!/usr/bin/env python3
"""The prefix's MQA attention (8 heads as 4224 rows of one head over 528 keys, head dim 256: fused.mqa_attention) at
the standard workload, over launch shapes; each a CUDA graph of 17 calls (one per prefix layer that attends),
device events after warm-up, median us per call, result checked against the first shape. Prints a table and
records bench/results/prefix_attention-<gpu>-<date>.json.
    python3 bench/prefix_attention.py [--out-dir bench/results]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.report import print_table  # noqa: E402
from triforce.runtime import fused  # noqa: E402
from triforce.timing import time_graph_us  # noqa: E402

ROWS, KEYS, D, CALLS = 528 * 8, 528, 256, 17
# (block_m, block_n, warps, stages). Session 11 also split the keys (prefix_attention-*-s11-key-splits.json), session
# 12 the head dim of p v over programs (*-s12-v-split.json): both removed
SHAPES = ((64, 64, 4, 2), (32, 64, 4, 2), (64, 64, 8, 2), (128, 64, 8, 2), (64, 32, 4, 2), (64, 64, 4, 3),
          (64, 32, 4, 3), (128, 32, 8, 2))


def graph_us(fn) -> float:
    return time_graph_us([fn] * CALLS)


def main():
    out_dir = rep.bench_parser(__doc__).parse_args().out_dir
    torch.manual_seed(0)
    q = torch.randn(ROWS, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(KEYS, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    bias = torch.zeros(KEYS, device="cuda", dtype=torch.bfloat16)
    bias[520:] = float("-inf")
    out = torch.empty_like(q)
    rows, ref = [], None
    for bm, bn, warps, stages in SHAPES:
        try:
            us = graph_us(lambda: fused.mqa_attention(q, k, v, bias, out, bm, bn, warps, stages))
        except Exception as err:   # a shape Triton cannot fit (shared memory): reported, not fatal
            rows.append([bm, bn, warps, stages, f"failed: {str(err)[:40]}", ""])
            continue
        ref = out.clone() if ref is None else ref
        rows.append([bm, bn, warps, stages, us, float((out.float() - ref.float()).abs().max())])
    columns = ["block_m", "block_n", "warps", "stages", "us", "max abs diff vs first"]
    print_table("prefix MQA attention, 4224 rows x 528 keys x 256 (us per call)", columns, rows)
    # the FP8 o projection's input at the default shape: E4M3 written by the attention, or bf16 then a quantize launch
    scale = torch.full((1,), 4.0, device="cuda")
    out8 = torch.empty(ROWS, D, device="cuda", dtype=torch.float8_e4m3fn)
    fp8_out = {"E4M3 from the attention (the engine)": graph_us(lambda: fused.mqa_attention(q, k, v, bias, out8,
                                                                                         quant_scale=scale)),
               "bf16, then quantize_fp8": graph_us(lambda: fused.quantize_fp8(fused.mqa_attention(q, k, v, bias, out),
                                                                             out8, scale))}
    print_table("prefix attention for an FP8 o projection (us per call, graph of 17)", ["form", "us"],
                [[name, us] for name, us in fp8_out.items()])
    rep.record_run(out_dir, "prefix_attention", {"unit": f"us per call, CUDA graph of {CALLS} calls",
                                                 "shapes": [dict(zip(columns, r)) for r in rows],
                                                 "fp8_output": fp8_out})


if __name__ == "__main__":
    main()
