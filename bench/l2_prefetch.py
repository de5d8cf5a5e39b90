#!/usr/bin/env python3
"""The denoise step's L2 weight prefetch (engine.py `_prefetch`: each layer's weights are prefetched into L2 from a
side stream one phase ahead of use) off, with normal and with evict_last priority, in one run on one loaded model:
graph replay median (device events, after warm-up), the stage split, agreement with the first variant and the ratio
to it. Records bench/results/l2_prefetch-plan<a|b>-<gpu>-<date>.json.
    python3 bench/l2_prefetch.py [--plan a] [--recipe h100] [--runs 100] [--out-dir bench/results]"""

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.runtime.observation import check_observation  # noqa: E402
from triforce.runtime.policy import Policy  # noqa: E402
from triforce.timing import time_cuda  # noqa: E402
from triforce.workload import STANDARD, cosine, random_noise, random_observation  # noqa: E402

VARIANTS = (("no prefetch", None), ("L2 prefetch", "normal"), ("L2 prefetch, evict_last", "evict_last"))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--plan", default="a", help="a or b")
    ap.add_argument("--recipe", default="h100", help="plan b recipe")
    ap.add_argument("--runs", type=int, default=100, help="timed graph replays per variant (>= 50)")
    ap.add_argument("--out-dir", default="bench/results", help="where the JSON record goes")
    a = ap.parse_args()
    config = STANDARD["config"]
    policy = Policy.load(f"synthetic:{config}", config, plan=a.plan, recipe=a.recipe if a.plan == "b" else None)
    eng, cfg = policy.backend, policy.config
    rng = np.random.default_rng(0)
    obs = check_observation(random_observation(cfg, rng, STANDARD["real_views"], STANDARD["prompt_tokens"]), cfg)
    noise = random_noise(cfg, rng)
    rows, results, first = [], {}, None
    for name, mode in VARIANTS:
        eng.l2_prefetch = mode
        eng.slots.clear()
        timing = time_cuda(eng.ready_replay(obs, noise), runs=a.runs, warmup_s=1.5)
        actions = eng.infer(obs, noise)
        stages = eng.stage_times_ms(obs, noise)
        first = first if first is not None else (timing["median_ms"], actions)
        results[name] = {"l2_prefetch": mode, "graph": timing, "stages_ms": stages,
                         "cosine_vs_first": cosine(actions, first[1]), "speedup_vs_first": first[0] / timing["median_ms"]}
        rows.append([name, timing["median_ms"], stages["vision"], stages["prefix"], stages["denoise_total"],
                     results[name]["speedup_vs_first"], results[name]["cosine_vs_first"]])
    rep.print_table(f"L2 weight prefetch, plan {a.plan}, {config} standard workload (graph replay median, ms)",
                    ["variant", "total", "vision", "prefix", "denoise", "x vs first", "cos vs first"], rows)
    record = {**rep.stamp(" ".join(sys.argv)), "plan": a.plan, "recipe": a.recipe if a.plan == "b" else None,
              "workload": STANDARD, "variants": results, "note": rep.RANDOM_WEIGHTS_NOTE}
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", record["device"]["gpu"] or "gpu").strip("-").lower()
    print("recorded:", rep.write_json(Path(a.out_dir) / f"l2_prefetch-plan{a.plan}-{gpu}-{record['date'][:10]}.json", record))


if __name__ == "__main__":
    main()
