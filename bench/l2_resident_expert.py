#!/usr/bin/env python3
"""What the denoise chain would gain if the expert's weights were read from L2 instead of DRAM: an upper bound,
measured by making every expert layer use layer 0's weights (those layers' weights then total 1-9 MB int4, 4-35 MB
bf16, and stay in L2 as far as it holds them; the actions are meaningless, only the time counts). Plan B (a recipe)
or Plan A (bf16) on the standard workload, graph replay median (device events after warm-up) and the stage split,
each variant against the engine as loaded in the same run. A variant that gains little says no prefetch into L2
(an L2 persistence window, the norms' lookahead: engine.L2_LOOKAHEAD) can pay either.
    python3 bench/l2_resident_expert.py [--plan a | --recipe h100_fast] [--runs 100] [--out-dir bench/results]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.runtime.observation import check_observation  # noqa: E402
from triforce.runtime.policy import Policy  # noqa: E402
from triforce.timing import time_cuda  # noqa: E402
from triforce.workload import STANDARD, standard_case  # noqa: E402

GEMMS = ("qkv", "o", "gate_up", "down")
VARIANTS = {"every layer its own weights (the engine)": (), "o shared (layer 0's)": ("o",),
            "qkv + o shared": ("qkv", "o"), "down shared": ("down",), "gate_up shared": ("gate_up",),
            "gate_up + down shared": ("gate_up", "down"), "all four shared": GEMMS}


def main():
    ap = rep.bench_parser(__doc__, runs=True)
    ap.add_argument("--plan", default="b", choices=("a", "b"), help="a (bf16 expert) or b (the recipe's)")
    ap.add_argument("--recipe", default="h100_fast", help="the Plan B recipe")
    a = ap.parse_args()
    config = STANDARD["config"]
    recipe = a.recipe if a.plan == "b" else None
    policy = Policy.load(f"synthetic:{config}", config, plan=a.plan, recipe=recipe)
    eng, cfg = policy.backend, policy.config
    rng = np.random.default_rng(0)
    obs, noise = standard_case(cfg, rng)
    obs = check_observation(obs, cfg)
    own = [dict(layer) for layer in eng.expert_layers]
    rows, results = [], {}
    for name, shared in VARIANTS.items():
        for i, layer in enumerate(eng.expert_layers):
            layer.update({g: own[0][g] if g in shared else own[i][g] for g in GEMMS})
        eng.slots.clear()                                   # re-capture on these weights
        timing = time_cuda(eng.ready_replay(obs, noise), runs=a.runs, warmup_s=1.5)
        stages = eng.stage_times_ms(obs, noise)
        base = results[next(iter(VARIANTS))]["graph"]["median_ms"] if results else timing["median_ms"]
        results[name] = {"shared": list(shared), "graph": timing, "stages_ms": stages,
                         "x_vs_engine": base / timing["median_ms"]}
        rows.append([name, timing["median_ms"], stages["vision"], stages["prefix"], stages["denoise_total"],
                     base / timing["median_ms"]])
    rep.print_table(f"expert weights read from L2 (layer 0's shared), plan {a.plan} {recipe or ''} (graph replay "
                    f"median, ms)", ["variant", "total", "vision", "prefix", "denoise", "x vs engine"], rows)
    rep.record_run(a.out_dir, f"l2_resident_expert-plan{a.plan}", {"plan": a.plan, "recipe": recipe,
                                                                   "workload": STANDARD, "variants": results,
                                                                   "note": rep.RANDOM_WEIGHTS_NOTE})


if __name__ == "__main__":
    main()
