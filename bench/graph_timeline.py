#!/usr/bin/env python3
"""Where the engine's graph spends its time, kernel by kernel, as replayed (standard workload). Earlier sessions
timed vision's kernels alone (bench/vision_ops.py) and found that a kernel's standalone time is not its time between
dependent GEMMs in the graph (session 22: a norm 2.3 us faster alone gained nothing in the engine). This traces the
replayed graph itself (torch.profiler / CUPTI kernel records: start, end) and reports:
  - one SigLIP layer as replayed: the kernels from one layer's attention to the next, each one's median duration and
    the median gap before it, over the 26 periods between the 27 attentions;
  - one action-expert layer of the denoise steps the same way, cut at its attention (the wheel's cluster kernel or
    the Triton one), over the periods whose kernels follow the most common sequence (the L2 lookahead's prefetches
    on their own stream fall into some periods and not others; under programmatic dependent launches a kernel's
    duration includes its wait for the one before, so read the period, not the durations);
  - every kernel name's count and total time in one replay, and the sum of the gaps.
    python3 bench/graph_timeline.py [--plan a|b] [--recipe h100_fast] [--replays 5] [--out-dir bench/results]
Records bench/results/graph_timeline-plan<a|b>-<gpu>-<date>.json."""

import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.workload import STANDARD, standard_policy  # noqa: E402

ATTENTION = "_packed_attention_kernel"   # one a SigLIP layer: the landmark a layer's period is cut at
EXPERT_ATTENTION = ("mqa_cluster_attention_kernel", "_mqa_partial_kernel")   # one an expert layer (steps 1-9 / 0)


def replay_kernels(replay, replays: int) -> list[list[tuple[str, float, float]]]:
    """Each replay's kernels as (name, start us, end us), in start order."""
    for _ in range(5):
        replay()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            replay()
            torch.cuda.synchronize()
    kernels = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                     if e.device_type == torch.autograd.DeviceType.CUDA and not e.name.startswith("Memcpy")
                     and not e.name.startswith("Memset"))
    # replays are separated by a host sync: cut where the device idled longest
    gaps = sorted(range(1, len(kernels)), key=lambda i: kernels[i][0] - kernels[i - 1][1], reverse=True)[:replays - 1]
    cuts = [0] + sorted(gaps) + [len(kernels)]
    return [[(n, s, e) for s, e, n in kernels[a:b]] for a, b in zip(cuts, cuts[1:])]


def short(name: str) -> str:
    return name if len(name) <= 70 else name[:67] + "..."


def layer_periods(run, landmarks):
    """The kernels of each period from one landmark kernel to the next: [(name, duration, gap before)]."""
    marks = [i for i, (n, _, _) in enumerate(run) if any(m in n for m in landmarks)]
    periods = []
    for a, b in zip(marks, marks[1:]):
        periods.append([(run[i][0], run[i][2] - run[i][1], run[i][1] - run[i - 1][2]) for i in range(a + 1, b + 1)])
    return periods


def median_layer(periods, exact: bool):
    """Per kernel of the layer: median duration and gap over the periods of the most common kernel sequence (every
    period's, where exact)."""
    shapes = Counter(tuple(n for n, _, _ in p) for p in periods)
    if not shapes:
        raise SystemExit("graph_timeline: no two landmark kernels in the traced replays: nothing to cut layers at")
    if exact and len(shapes) != 1:
        raise SystemExit(f"graph_timeline: SigLIP layers differ in their kernels ({len(shapes)} sequences)")
    shape, count = shapes.most_common(1)[0]
    same = [p for p in periods if tuple(n for n, _, _ in p) == shape]
    layer = [{"kernel": name, "median_us": float(np.median([p[pos][1] for p in same])),
              "median_gap_before_us": float(np.median([p[pos][2] for p in same]))} for pos, name in enumerate(shape)]
    period = float(np.median([sum(d + g for _, d, g in p) for p in same]))   # landmark start to start
    return layer, period, count


def print_layer(title, layer, period):
    rep.print_table(title, ["kernel", "duration", "gap before"],
                    [[short(r["kernel"]), r["median_us"], r["median_gap_before_us"]] for r in layer])
    print(f"layer period {period:.2f} us: kernels {sum(r['median_us'] for r in layer):.2f}, "
          f"gaps {sum(r['median_gap_before_us'] for r in layer):.2f}")


def main():
    a = rep.parse_plan_bench(__doc__, "graph_timeline", "replays", 5, "replays traced")
    policy, obs, noise = standard_policy(a.plan, a.recipe)
    eng = policy.backend
    runs = replay_kernels(eng.ready_replay(obs, noise), a.replays)
    spans = [run[-1][2] - run[0][1] for run in runs]
    periods = [p for run in runs for p in layer_periods(run, (ATTENTION,))]
    layer, period, _ = median_layer(periods, exact=True)
    print_layer(f"one SigLIP layer as replayed, plan {a.plan} (median of {len(periods)} periods, us)", layer, period)
    expert_periods = [p for run in runs for p in layer_periods(run, EXPERT_ATTENTION)[:-1]]  # the last: the tail
    expert, expert_period, same = median_layer(expert_periods, exact=False)
    print_layer(f"one expert layer as replayed, plan {a.plan} (median of the {same} of {len(expert_periods)} periods "
                "with the most common kernels, us)", expert, expert_period)
    per_name = defaultdict(lambda: [0, 0.0])
    run = runs[len(runs) // 2]
    for n, s, e in run:
        per_name[n][0] += 1
        per_name[n][1] += e - s
    gaps = sum(max(0.0, run[i][1] - run[i - 1][2]) for i in range(1, len(run)))
    top = sorted(per_name.items(), key=lambda kv: -kv[1][1])[:30]
    rep.print_table(f"kernels of one replay (traced span {np.median(spans) / 1000:.3f} ms, gaps {gaps / 1000:.3f} ms)",
                    ["kernel", "count", "total ms"], [[short(n), c, t / 1000] for n, (c, t) in top])
    rep.record_run(a.out_dir, f"graph_timeline-plan{a.plan}",
                   {"plan": a.plan, "recipe": a.recipe if a.plan == "b" else None, "workload": STANDARD,
                    "settings": eng.launch_settings(),
                    "method": "torch.profiler (CUPTI) kernel records of graph replays after 5 untraced ones; "
                              "tracing may stretch gaps slightly",
                    "traced_span_ms": [s / 1000 for s in spans], "siglip_layer": layer, "siglip_period_us": period,
                    "expert_layer": expert, "expert_period_us": expert_period,
                    "expert_periods": {"traced": len(expert_periods), "most_common_sequence": same},
                    "kernels": [{"kernel": n, "count": c, "total_ms": t / 1000} for n, (c, t) in
                                sorted(per_name.items(), key=lambda kv: -kv[1][1])],
                    "gaps_ms": gaps / 1000, "note": rep.RANDOM_WEIGHTS_NOTE})


if __name__ == "__main__":
    main()
