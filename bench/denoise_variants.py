#!/usr/bin/env python3
"""The Plan A engine's denoise-path variants in one run, on one loaded model: per-GEMM expert layers (nine launches
and a memset per layer), the fused expert layer (runtime/expert_layer.py, six launches), and the fused layer with
programmatic dependent launch (weights prefetched while the previous kernel drains). Each is its own captured
graph; graph replay median (device events, after warm-up), the stage split, agreement with the first variant, and
the ratio to it. Records bench/results/denoise_variants-<gpu>-<date>.json.
    python3 bench/denoise_variants.py [--config pi05_libero] [--runs 100] [--out-dir bench/results]"""

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.runtime import fused  # noqa: E402
from triforce.runtime.observation import check_observation  # noqa: E402
from triforce.runtime.policy import Policy  # noqa: E402
from triforce.timing import time_cuda  # noqa: E402
from triforce.workload import STANDARD, cosine, random_noise, random_observation  # noqa: E402

VARIANTS = (("per-GEMM expert", False, False), ("fused expert layer", True, False), ("fused + PDL", True, True))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="pi05_libero", help="model config (synthetic weights)")
    ap.add_argument("--runs", type=int, default=100, help="timed graph replays per variant (>= 50)")
    ap.add_argument("--out-dir", default="bench/results", help="where the JSON record goes")
    a = ap.parse_args()
    policy = Policy.load(f"synthetic:{a.config}", a.config, plan="a")
    eng, cfg = policy.backend, policy.config
    rng = np.random.default_rng(0)
    obs = check_observation(random_observation(cfg, rng, STANDARD["real_views"], STANDARD["prompt_tokens"]), cfg)
    noise = random_noise(cfg, rng)
    rows, results, first = [], {}, None
    for name, fused_expert, pdl in VARIANTS:
        if pdl and not fused.pdl_supported():
            print(f"{name}: skipped, programmatic dependent launch needs sm_90+")
            continue
        eng.fused_expert, eng.pdl = fused_expert, pdl
        eng.slots.clear()
        replay = eng.ready_replay(obs, noise)
        timing = time_cuda(replay, runs=a.runs, warmup_s=1.5)
        actions = eng.infer(obs, noise)
        stages = eng.stage_times_ms(obs, noise)
        first = first if first is not None else (timing["median_ms"], actions)
        results[name] = {"graph": timing, "stages_ms": stages, "cosine_vs_first": cosine(actions, first[1]),
                         "speedup_vs_first": first[0] / timing["median_ms"]}
        rows.append([name, timing["median_ms"], stages["vision"], stages["prefix"], stages["denoise_total"],
                     results[name]["speedup_vs_first"], results[name]["cosine_vs_first"]])
    rep.print_table(f"denoise variants, {a.config}, standard workload (graph replay median, ms)",
                    ["variant", "total", "vision", "prefix", "denoise", "x vs first", "cos vs first"], rows)
    record = {**rep.stamp(" ".join(sys.argv)), "config": a.config, "workload": STANDARD, "variants": results,
              "note": rep.RANDOM_WEIGHTS_NOTE}
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", record["device"]["gpu"] or "gpu").strip("-").lower()
    print("recorded:", rep.write_json(Path(a.out_dir) / f"denoise_variants-{gpu}-{record['date'][:10]}.json", record))


if __name__ == "__main__":
    main()
