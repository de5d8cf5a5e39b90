#!/usr/bin/env python3
"""The many-row GEMMs that only feed the fp32 residual (SigLIP o / fc2 at 512 rows, the prefix's o / down at 528),
cuBLAS (addmm to bf16, which a norm kernel then adds) against fused.residual_gemm (split-K tiles added straight into
the residual) over a few K splits and tile shapes. Each entry is a CUDA graph of 20 calls; device events after
warm-up, median us per call; TFLOP/s; each variant's result checked against cuBLAS. Prints a table and records
bench/results/residual_gemm-<gpu>-<date>.json.
    python3 bench/residual_gemm.py [--out-dir bench/results]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.runtime import fused  # noqa: E402
from triforce.timing import time_graph_us  # noqa: E402

SHAPES = (("SigLIP o", 512, 1152, 1152), ("SigLIP fc2", 512, 1152, 4304), ("prefix o", 528, 2048, 2048),
          ("prefix down", 528, 2048, 16384))
TILES = ({"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 4},
         {"block_m": 128, "block_n": 64, "num_warps": 4, "num_stages": 4},
         {"block_m": 64, "block_n": 128, "num_warps": 4, "num_stages": 4})
SPLITS = (None, 1, 2, 4, 8)
CALLS = 20


def main():
    out_dir = rep.bench_parser(__doc__).parse_args().out_dir
    torch.manual_seed(0)
    rows, record = [], []
    for name, m, n, k in SHAPES:
        x = torch.randn(m, k, device="cuda").bfloat16()
        w = (torch.randn(n, k, device="cuda") / k ** 0.5).bfloat16()
        b = torch.randn(n, device="cuda").bfloat16()
        res = torch.zeros(m, n, device="cuda")
        flop = 2 * m * n * k
        ref = torch.addmm(b, x, w.t()).float()
        us = time_graph_us([lambda: torch.addmm(b, x, w.t())] * CALLS)
        entry = {"shape": name, "m": m, "n": n, "k": k, "cublas_us": us, "variants": []}
        rows.append([name, "cuBLAS addmm (bf16 out)", us, flop / us / 1e6, 1.0, ""])
        for tile in TILES:
            for split in SPLITS:
                res.zero_()
                fused.residual_gemm(x, w, res, b, split=split, **tile)
                err = float((res - ref).abs().max() / ref.abs().max())
                t = time_graph_us([lambda: fused.residual_gemm(x, w, res, b, split=split, **tile)] * CALLS)
                label = f"{tile['block_m']}x{tile['block_n']}, {tile['num_warps']} warps, split {split or 'auto'}"
                entry["variants"].append({**tile, "split": split, "us": t, "max_rel_err": err})
                rows.append([name, label, t, flop / t / 1e6, us / t, err])
        record.append(entry)
    rep.print_table("residual GEMMs (us per call)", ["shape", "variant", "us", "TFLOP/s", "x vs cuBLAS", "max rel err"], rows)
    rep.record_run(out_dir, "residual_gemm", {"unit": f"us per call, CUDA graph of {CALLS} calls", "shapes": record})


if __name__ == "__main__":
    main()
