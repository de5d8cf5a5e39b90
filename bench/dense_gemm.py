#!/usr/bin/env python3
"""SigLIP's bf16 GEMMs at the standard workload (M = 512: 2 views x 256 tokens): cuBLAS (torch.addmm, fc1 with
cuBLASLt's GELU epilogue; what the engine runs by default) against the wheel's CUTLASS dense_gemm (Hopper) in each
tile and schedule. Each a CUDA graph of 20 calls (launch overhead out, as in the engine), device events after
warm-up, median us per call, all in one run; each result checked against cuBLAS.
Records bench/results/dense_gemm-<gpu>-<date>.json.
    python3 bench/dense_gemm.py [--out-dir DIR]"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "cutlass_sm110")]

import torch  # noqa: E402

import devbuild  # noqa: E402
from triforce import report as rep  # noqa: E402
from triforce.timing import time_graph_us  # noqa: E402

M = 512
SHAPES = [("qkv", 3456, 1152, False), ("o", 1152, 1152, False), ("fc1 + GELU", 4352, 1152, True),
          ("fc2", 1152, 4352, False)]   # (name, N, K, GELU); the MLP width padded as the engine pads it
CUTLASS = [(tile, sched) for tile in (128, 64) for sched in ("heuristic", "data_parallel", "stream_k", "stream_k_nd")]
CALLS = 20


def main():
    out_dir = rep.bench_parser(__doc__).parse_args().out_dir
    tk = devbuild.load()
    torch.manual_seed(0)
    rows, record = [], {}
    for name, n, k, gelu in SHAPES:
        x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k ** -0.5
        b = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        flop = 2 * M * n * k
        cublas = (lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True)) if gelu else (lambda: torch.addmm(b, x, w.t()))
        ref = cublas().float()
        base = time_graph_us([cublas] * CALLS)
        entry = {"n": n, "k": k, "gelu": gelu, "cublas_us": base, "cutlass": {}}
        rows.append([name, "cuBLAS", base, flop / base / 1e6, 1.0, 0.0])
        for tile, sched in CUTLASS:
            ws = torch.empty(max(1, tk.dense_workspace_size(M, n, k, gelu, tile, sched)), dtype=torch.uint8, device="cuda")
            out = torch.empty(M, n, device="cuda", dtype=torch.bfloat16)
            run = lambda: tk.dense_gemm(x, w, b, out, ws, gelu, tile, sched)  # noqa: E731
            run()
            err = float((out.float() - ref).norm() / ref.norm())
            us = time_graph_us([run] * CALLS)
            entry["cutlass"][f"{tile}/{sched}"] = {"us": us, "rel_err_vs_cublas": err}
            rows.append([name, f"CUTLASS {tile}/{sched}", us, flop / us / 1e6, base / us, err])
            print(f"{name}: CUTLASS tile {tile} {sched}: {us:.2f} us ({base / us:.2f}x cuBLAS {base:.2f}), err {err:.1e}",
                  flush=True)
        record[name] = entry
    rep.print_table(f"SigLIP GEMMs at M = {M} (us per call, graph of {CALLS})",
                    ["gemm", "kernel", "us", "TFLOP/s", "x vs cuBLAS", "rel err vs cuBLAS"], rows)
    rep.record_run(out_dir, "dense_gemm", {"m": M, "unit": f"us per call, CUDA graph of {CALLS} calls", "gemms": record})


if __name__ == "__main__":
    main()
