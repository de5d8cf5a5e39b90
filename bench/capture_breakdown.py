#!/usr/bin/env python3
"""Where a first boot's time goes (fresh process, the Triton cache it is given): Policy.load (compiles overlapping the
checkpoint read), then the first capture's parts for the standard workload's key: the dry forward's compiles
(specializations the load's placeholder key did not cover), each of the two warm-up forwards, the graph capture.
Wall-clock seconds with device syncs between parts. Prints a table and records
bench/results/capture_breakdown-<gpu>-<date>.json.
    TRITON_CACHE_DIR=$(mktemp -d) python3 bench/capture_breakdown.py [--out-dir bench/results]"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from triforce import report as rep  # noqa: E402
from triforce.runtime.checkpoint import resolve_checkpoint  # noqa: E402
from triforce.runtime.config import load_config  # noqa: E402
from triforce.runtime.observation import check_observation  # noqa: E402
from triforce.runtime.policy import Policy  # noqa: E402
from triforce.workload import STANDARD, random_observation  # noqa: E402


def timed(parts: dict, name: str, fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    parts[name] = time.perf_counter() - start
    return out


def main():
    a = rep.bench_parser(__doc__).parse_args()
    config = STANDARD["config"]
    cfg = load_config(config)
    resolve_checkpoint(f"synthetic:{config}", cfg)
    parts = {}
    policy = timed(parts, "Policy.load (compiles overlap the read)", lambda: Policy.load(f"synthetic:{config}", config))
    eng = policy.backend
    obs = check_observation(random_observation(cfg, np.random.default_rng(0), STANDARD["real_views"],
                                               STANDARD["prompt_tokens"]), cfg)
    key = eng._key(obs)
    bufs = eng._new_buffers(key)
    compiles = timed(parts, "capture: dry forward submits", lambda: eng.start_compiles(key, bufs))
    submitted = len(compiles.futures)
    timed(parts, f"capture: its {submitted} compiles (cached or new)", compiles.wait)
    with torch.no_grad():
        for i in (1, 2):
            timed(parts, f"capture: warm-up forward {i}", lambda: eng._forward(bufs))
        graph = torch.cuda.CUDAGraph()

        def capture():
            with torch.cuda.graph(graph):
                eng._forward(bufs)
        timed(parts, "capture: graph capture", capture)
    timed(parts, "first replay", graph.replay)
    rep.print_table(f"first boot of Plan A, {config} (s)", ["part", "seconds"], [[k, v] for k, v in parts.items()])
    rep.record_run(a.out_dir, "capture_breakdown", {"config": config, "key": [list(key[0]), key[1]], "seconds": parts})


if __name__ == "__main__":
    main()
