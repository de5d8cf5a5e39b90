#!/usr/bin/env python3
"""How torch._scaled_mm scales an E4M3 output. A first form of Fp8Linear.write_e4m3 passed 1 / output_scale as
scale_result and lost precision (worst cosine 0.9555, h100_run part 49); it now folds it into scale_a. For a few
values s of scale_result, then of scale_a, the median of got / (0.5 * a b^T) over the outputs that are neither
saturated nor tiny: s means multiplied by s, 1 / s divided, 1 ignored. Records
bench/results/scaled_mm_output_scale-<gpu>-<date>.json.
    python3 bench/scaled_mm_output_scale.py [--out-dir bench/results]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from triforce import report as rep  # noqa: E402


def main():
    a = rep.bench_parser(__doc__).parse_args()
    torch.manual_seed(0)
    x = (torch.randn(64, 256, device="cuda") * 2).to(torch.float8_e4m3fn)
    w = (torch.randn(128, 256, device="cuda") * 2).to(torch.float8_e4m3fn)
    scale_a, one = torch.tensor(0.5, device="cuda"), torch.ones((), device="cuda")
    exact = x.float() @ w.float().T * 0.5
    rows, ratios = [], {}
    for how in ("scale_result", "scale_a"):
        for s in (0.25, 1.0, 4.0):
            t = torch.tensor(s, device="cuda")
            kw = {"scale_a": scale_a, "scale_result": t} if how == "scale_result" else {"scale_a": scale_a * t}
            got = torch._scaled_mm(x, w.t(), scale_b=one, out_dtype=torch.float8_e4m3fn, **kw).float()
            keep = (got.abs() < 400) & (got.abs() > 1) & (exact.abs() > 1e-3)
            ratio = float((got[keep] / exact[keep]).median())
            ratios[f"{how} {s}"] = {"median_ratio": ratio, "saturated": int((got.abs() == 448).sum()),
                                    "nan": int(got.isnan().sum())}
            rows.append([how, s, ratio, ratios[f"{how} {s}"]["saturated"], ratios[f"{how} {s}"]["nan"]])
    rep.print_table("torch._scaled_mm E4M3 output: got / (0.5 a b^T)", ["scaled by", "s", "median ratio", "saturated",
                                                                       "nan"], rows)
    rep.record_run(a.out_dir, "scaled_mm_output_scale", {"torch": torch.__version__, "ratios": ratios,
                                                          "exact_amax": float(exact.abs().max())})


if __name__ == "__main__":
    main()
