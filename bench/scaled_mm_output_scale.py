#!/usr/bin/env python3
"""What torch._scaled_mm does with scale_result when it writes E4M3 (Fp8Linear.write_e4m3 depends on it): for a few
scale_result values s, the median of got / (scale_a * scale_b * a b^T) over the outputs that are not saturated or
tiny. A ratio of s means the result is multiplied by s, 1 / s divided, 1 ignored. Prints a table and records
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
    for s in (0.25, 1.0, 4.0):
        got = torch._scaled_mm(x, w.t(), scale_a=scale_a, scale_b=one, scale_result=torch.tensor(s, device="cuda"),
                               out_dtype=torch.float8_e4m3fn).float()
        keep = (got.abs() < 400) & (got.abs() > 1) & (exact.abs() > 1e-3)
        ratio = float((got[keep] / exact[keep]).median())
        ratios[str(s)] = {"median_ratio": ratio, "saturated": int((got.abs() == 448).sum()), "nan": int(got.isnan().sum())}
        rows.append([s, ratio, ratios[str(s)]["saturated"], ratios[str(s)]["nan"]])
    got = torch._scaled_mm(x, w.t(), scale_a=scale_a, scale_b=one, out_dtype=torch.float8_e4m3fn).float()
    keep = (got.abs() < 400) & (got.abs() > 1)
    rows.append(["none", float((got[keep] / exact[keep]).median()), int((got.abs() == 448).sum()), int(got.isnan().sum())])
    rep.print_table("torch._scaled_mm E4M3 output: got / exact", ["scale_result", "median ratio", "saturated", "nan"], rows)
    rep.record_run(a.out_dir, "scaled_mm_output_scale", {"torch": torch.__version__, "ratios": ratios,
                                                          "exact_amax": float(exact.abs().max())})


if __name__ == "__main__":
    main()
