"""Run by tests/test_expert_layer.py in a fresh process (TRITON_INTERPRET is set before triton is imported).
The persistent expert layer, phase by phase in Triton's CPU interpreter, against the layer's formula in fp32 over two
layers sharing one scratch (the second checks that each layer leaves its accumulators zeroed for the next).
Prints one line per check, exits 1 on a mismatch."""

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from triforce.runtime import expert_layer as el  # noqa: E402
from triforce.runtime import fused  # noqa: E402

torch.manual_seed(0)
M, W, H, D, FF, SEQ, EPS = 5, 256, 2, 64, 512, 100, 1e-6


def layer_weights():
    r = lambda *s: (torch.randn(*s) / s[-1] ** 0.5).bfloat16()  # noqa: E731
    ada = lambda: (torch.rand(W) + 0.5, torch.randn(W) * 0.1, torch.randn(W))  # noqa: E731
    return dict(ada1=ada(), ada2=ada(), wqkv=r((H + 2) * D, W), wo=r(W, H * D), wgu=r(2 * FF, W), wd=r(W, FF),
                kc=torch.randn(SEQ + M, D).bfloat16(), vc=torch.randn(SEQ + M, D).bfloat16())


failures = []
valid = torch.ones(SEQ + M, dtype=torch.bool)
valid[70:90] = False                          # prompt padding inside the prefix: masked keys
bias = torch.zeros(SEQ + M, dtype=torch.bfloat16).masked_fill_(~valid, float("-inf"))
pos = (valid[:SEQ].sum() + torch.arange(M)).int()
cos, sin = fused.rope_tables(SEQ + M, D, 10000.0, "cpu")
x = torch.randn(M, W)
ref = x.clone()
scratch = el.ExpertScratch.allocate(M, W, SEQ + M, H, D, FF, launches=2, device="cpu", programs=3)   # shares split tiles
for n in range(2):
    lw = layer_weights()
    ref = el.reference_layer(ref, lw["ada1"], lw["ada2"], lw["wqkv"], lw["wo"], lw["wgu"], lw["wd"], lw["kc"], lw["vc"],
                             bias, pos, 10000.0, SEQ, EPS, H, D)
    (s1, b1, g1), (s2, b2, g2) = lw["ada1"], lw["ada2"]
    ada1, ada2 = (s1, el.shift_through(lw["wqkv"], b1), g1), (s2, el.shift_through(lw["wgu"], b2), g2)
    for phase in range(el.PHASES):
        el.expert_layer(x, ada1, ada2, lw["wqkv"], lw["wo"], lw["wgu"], lw["wd"], lw["kc"], lw["vc"], bias,
                        pos, cos, sin, SEQ, scratch, EPS, H, D, phase=phase)
    err = float((x - ref).abs().max() / ref.abs().max())
    print(f"expert layer {n}: max rel err vs fp32 {err:.2e} (tol 2e-2)")
    if not err <= 2e-2:
        failures.append(f"layer {n}")
    if scratch.qkv.abs().max() != 0:
        failures.append(f"layer {n} left its qkv accumulator non-zero")
try:                                          # a horizon the one-row-block kernel cannot take: refused up front
    el.ExpertScratch.allocate(17, W, SEQ + 17, H, D, FF, launches=1, device="cpu")
    failures.append("17 rows were not refused")
except ValueError as e:
    print(f"17 action rows: refused ({e})")

print("FAILED: " + ", ".join(failures) if failures else "the persistent expert layer matches")
sys.exit(1 if failures else 0)
