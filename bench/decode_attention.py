#!/usr/bin/env python3
"""The denoise step's attention (10 actions x 8 heads = 80 rows of one kv head over 528 prefix + 10 action keys, head
dim 256) on the Triton split-KV kernels (partials + combine, 2 launches) and on the wheel's one-launch cluster kernel
(mqa_cluster_attention, per max_splits), each a CUDA graph of 18 calls (one per expert layer), plain launches and
programmatic dependent launches; device events after warm-up, median us per call, result checked against an fp32
reference. Prints a table and records bench/results/decode_attention-<gpu>-<date>.json.
    python3 bench/with_devbuild.py bench/decode_attention.py [--out-dir bench/results]"""

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.runtime import fused  # noqa: E402
from triforce.timing import time_graph_us  # noqa: E402

ROWS, PREFIX, ACTIONS, D, CALLS = 80, 528, 10, 256, 18


def main():
    import triforce_kernels as tk

    out_dir = rep.bench_parser(__doc__).parse_args().out_dir
    torch.manual_seed(0)
    keys = PREFIX + ACTIONS
    q = torch.randn(ROWS, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(keys, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    bias = torch.zeros(keys, device="cuda", dtype=torch.bfloat16)
    bias[16 + 512:PREFIX] = float("-inf")          # a 16-token prompt in its bucket: the rest of the slots masked
    ref = torch.softmax(q.float() @ k.float().T / D ** 0.5 + bias.float(), -1) @ v.float()
    out = torch.empty_like(q)
    kernels = {"triton partials + combine": lambda dep: fused.mqa_attention_split(q, k, v, bias, out)}
    for splits in (0, 16, 12, 8):   # 0: the largest cluster the GPU schedules (the engine's)
        kernels[f"cluster, max_splits {splits}"] = (
            lambda dep, s=splits: tk.mqa_cluster_attention(q, k, v, bias, out, static_keys=PREFIX, max_splits=s,
                                                           dependent=dep))
    rows, results = [], {}
    for name, call in kernels.items():
        timings = {}
        for mode in ("plain", "dependent"):
            dep = mode == "dependent"
            with fused.dependent_launches() if dep else contextlib.nullcontext():
                timings[mode] = time_graph_us([lambda: call(dep)] * CALLS)
        err = float(((out.float() - ref).norm() / ref.norm()).item())
        results[name] = {**timings, "rel_err_vs_fp32": err}
        rows.append([name, timings["plain"], timings["dependent"], err])
    base = results["triton partials + combine"]
    for row in rows:
        row.append(base["dependent"] / row[2])
    columns = ["kernel", "plain us", "dependent us", "rel err vs fp32", "x vs triton (dependent)"]
    rep.print_table(f"denoise attention, {ROWS} rows x {keys} keys x {D} (us per call, graph of {CALLS})", columns,
                    rows)
    rep.record_run(out_dir, "decode_attention", {"unit": f"us per call, CUDA graph of {CALLS} calls",
                                                 "kernels": results})


if __name__ == "__main__":
    main()
