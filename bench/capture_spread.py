#!/usr/bin/env python3
"""The same engine settings captured again and again (standard workload): each capture's graph replay median and
stage split, and how far apart the captures lie. Session 19 saw the L2 lookahead from 16 programs give 9.95 ms in
one capture and 12.2 in another of the same setting, and session 20 one stage-timing capture whose denoise took
8.19 ms against 4.25: this measures how often the shipped defaults do that. Session 21 saw it in the sixth graph
captured in each of three processes, with the driver's 8 hardware queues and with CUDA_DEVICE_MAX_CONNECTIONS=32
alike (recorded): not a shared hardware queue, but torch's 32-stream pool handing the engine's denoise stream out as
its L2-lookahead stream. Mended by engine.EngineStreams: in session 22 (part 79) 8 captures in one process gave
9.683-9.721 ms and every stage capture's denoise 4.213-4.219 ms, the sixth included (bench/NOTES.md).
    python3 bench/capture_spread.py [--plan a|b] [--recipe h100_fast] [--captures 8] [--runs 50]
        [--out-dir bench/results]
Records bench/results/capture_spread-plan<a|b>-<gpu>-<date>.json."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from triforce import report as rep  # noqa: E402
from triforce.timing import time_cuda  # noqa: E402
from triforce.workload import STANDARD, cosine, standard_policy  # noqa: E402


def main():
    a = rep.parse_plan_bench(__doc__, "capture_spread", "captures", 8, "fresh captures of the same settings",
                             runs=True)
    policy, obs, noise = standard_policy(a.plan, a.recipe)
    eng, config = policy.backend, STANDARD["config"]
    rows, captures, first = [], [], None
    for i in range(a.captures):
        eng.slots.clear()                       # a fresh capture (and instantiation) of the same graph
        timing = time_cuda(eng.ready_replay(obs, noise), runs=a.runs, warmup_s=1.0)
        actions = eng.infer(obs, noise)
        stages = eng.stage_times_ms(obs, noise)  # its own instrumented capture
        first = actions if first is None else first
        captures.append({"graph": timing, "stages_ms": stages, "cosine_vs_first": cosine(actions, first)})
        rows.append([i, timing["median_ms"], timing["p90_ms"], stages["total"], stages["vision"], stages["prefix"],
                     stages["denoise_total"], captures[-1]["cosine_vs_first"]])
    medians = [c["graph"]["median_ms"] for c in captures] + [c["stages_ms"]["total"] for c in captures]
    spread = {"min_ms": min(medians), "max_ms": max(medians), "max_over_min": max(medians) / min(medians)}
    rep.print_table(f"capture spread, plan {a.plan}, {config} standard workload ({a.captures} captures, ms)",
                    ["capture", "graph median", "graph p90", "stage capture total", "vision", "prefix", "denoise",
                     "cos vs first"], rows)
    print(f"slowest / fastest of {2 * a.captures} captures: {spread['max_over_min']:.3f}")
    rep.record_run(a.out_dir, f"capture_spread-plan{a.plan}",
                   {"plan": a.plan, "recipe": a.recipe if a.plan == "b" else None, "workload": STANDARD,
                    "settings": eng.launch_settings(), "captures": captures, "spread": spread,
                    # how many hardware queues the driver spreads streams over (set before CUDA starts)
                    "cuda_device_max_connections": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS", "unset (8)"),
                    "note": rep.RANDOM_WEIGHTS_NOTE})


if __name__ == "__main__":
    main()
