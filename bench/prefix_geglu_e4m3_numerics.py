"""CPU numerics study (no GPU): how far would writing the prefix's FP8 gate/up GEMM output in E4M3 move the actions?

That would let the prefix's GeGLU kernel read 1 byte an element instead of 2 (about 8 us a layer of its 16 on the
H100, bench/NOTES.md, fourteenth session), at the price of one more E4M3 rounding. The fp32 reference (pi05_libero,
synthetic weights) runs three ways on the same observations and noise:
  reference: as is
  act e4m3:  the GeGLU output rounded to E4M3 (per-tensor scale), as Plan B's prefix already does (a yardstick)
  + gate/up: also the gate/up output rounded to E4M3 with one per-tensor scale over the raw GEMM output, the FP8
             per-channel weight scales (amax / 448 of each weight row) divided out first, as Plan B defers them
The per-tensor scales come from each call's own amax (a calibrated static scale can only be coarser). Reports each
variant's worst cosine against the reference, and records bench/results/prefix_geglu_e4m3_numerics-cpu-<date>.json.
(The fifteenth session built it, with a calibrated static scale, as Plan B's default: quant.quantize.E4M3_OUTPUTS;
on the H100 the actions moved by 3.3e-5 in cosine against bf16 outputs, engine_variants-planb-*-s15-e4m3.json.)
    python3 bench/prefix_geglu_e4m3_numerics.py [--observations 3] [--out-dir bench/results]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.runtime.model import gelu_tanh  # noqa: E402
from triforce.runtime.policy import Policy  # noqa: E402
from triforce.workload import STANDARD, cosine, standard_case  # noqa: E402

E4M3_MAX = 448.0


def e4m3(t: torch.Tensor) -> torch.Tensor:
    """t rounded to E4M3 under one per-tensor scale (its amax at the top of the range)."""
    scale = t.abs().amax().clamp_min(1e-30) / E4M3_MAX
    return (t / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).to(t.dtype) * scale


def mlp(model, variant: str):
    """The reference's Gemma MLP with the variant's roundings on the prefix layers (the expert's stays exact)."""
    channel = {}

    def run(h, name, lid):
        w = model.w
        wg, wu, wd = (w[f"{name}.mlp.{p}_proj.weight"] for p in ("gate", "up", "down"))
        gate, up = F.linear(h, wg), F.linear(h, wu)
        if lid.startswith("prefix") and variant == "+ gate/up":
            if name not in channel:   # the FP8 weight rows' scales, deferred past the GEMM in Plan B
                channel[name] = torch.cat([wg, wu]).abs().amax(1) / E4M3_MAX
            ws = channel[name]
            raw = e4m3(torch.cat([gate, up], 1) / ws) * ws
            gate, up = raw.split(gate.shape[1], 1)
        act = gelu_tanh(gate) * up
        if lid.startswith("prefix") and variant != "reference":
            act = e4m3(act)
        return F.linear(act, wd)

    return run


def main():
    ap = rep.bench_parser(__doc__)
    ap.add_argument("--observations", type=int, default=3, help="observations (each a CPU inference per variant)")
    a = ap.parse_args()
    if a.observations < 1:
        ap.error(f"--observations must be at least 1, got {a.observations}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    policy = Policy.load(f"synthetic:{STANDARD['config']}", STANDARD["config"], plan="ref", device="cpu")
    model, cfg = policy.backend.model, policy.config
    rng = np.random.default_rng(0)
    cases = [standard_case(cfg, rng) for _ in range(a.observations)]
    actions = {}
    for variant in ("reference", "act e4m3", "+ gate/up"):
        model._mlp = mlp(model, variant)
        actions[variant] = [policy.infer(obs, noise) for obs, noise in cases]
        print(f"{variant}: done", flush=True)
    worst = {v: min(cosine(x, y) for x, y in zip(actions[v], actions["reference"])) for v in actions}
    rep.print_table(f"prefix GeGLU roundings, {cfg.name} fp32 reference on CPU, {a.observations} observations",
                    ["variant", "worst cosine vs reference"], [[v, worst[v]] for v in worst])
    rep.record_run(a.out_dir, "prefix_geglu_e4m3_numerics", {
        "config": cfg.name, "observations": a.observations, "worst_cosine_vs_reference": worst,
        "note": rep.RANDOM_WEIGHTS_NOTE + "; synthetic weights generated on this machine's CPU"})


if __name__ == "__main__":
    main()
