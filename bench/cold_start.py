#!/usr/bin/env python3
"""Cold start (load + the first inference, i.e. reading the checkpoint + Triton compiles + graph capture) of Plan A in
fresh processes, each way twice with an empty Triton cache, then once more with the cache the last process left (a
restart on a machine that ran the engine before). The ways:
- compiles one by one: each Triton kernel compiles when the warm-up first launches it;
- parallel compiles at the first inference: a dry forward submits them all to a thread pool (runtime/jit_warmup.py)
  after the checkpoint is read;
- parallel compiles while loading (Policy.load's way): the dry forward runs on placeholder weights before the
  checkpoint is read, so the compiles and the read overlap (Pi05Engine.compiling_while_loading).
The synthetic checkpoint is written and synced to disk first (its write-back otherwise slows the loads that follow);
the clock starts after the imports; peak GPU memory is the process's (torch allocator). Records bench/results/cold_start-<gpu>-<date>.json.
    python3 bench/cold_start.py [--config pi05_libero] [--workers 8] [--out-dir bench/results]"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from triforce import report as rep  # noqa: E402

CHILD = """
import json, sys, time
import numpy as np
import torch
from triforce.runtime.checkpoint import load_state, resolve_checkpoint
from triforce.runtime.config import load_config
from triforce.runtime.engine import Pi05Engine
from triforce.runtime.policy import Policy
from triforce.workload import STANDARD, random_observation
config, way, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = load_config(config)
path, _ = resolve_checkpoint(f"synthetic:{config}", cfg)   # the synthetic file is written before the clock starts
start = time.perf_counter()
if way == "while_loading":
    policy = Policy.load(f"synthetic:{config}", config, plan="a", precompile_workers=workers)
else:
    torch.cuda.init()
    eng = Pi05Engine(cfg, load_state(path, cfg, device="cuda"), precompile_workers=workers)
    policy = Policy(cfg, eng, "a", True, path, time.perf_counter() - start)
loaded = time.perf_counter() - start
policy.infer(random_observation(cfg, np.random.default_rng(0), STANDARD["real_views"], STANDARD["prompt_tokens"]))
print(json.dumps({"load_s": loaded, "cold_start_s": time.perf_counter() - start,
                  "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30}))
"""


def child(config: str, way: str, workers: int, cache: str) -> dict:
    env = {**os.environ, "TRITON_CACHE_DIR": cache, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-c", CHILD, config, way, str(workers)], env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"cold-start child failed:\n{r.stdout}\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = rep.bench_parser(__doc__)
    ap.add_argument("--config", default="pi05_libero", help="model config (synthetic weights)")
    ap.add_argument("--workers", type=int, default=0, help="compile threads (0: the engine's default)")
    a = ap.parse_args()
    from triforce.runtime.jit_warmup import default_workers

    from triforce.runtime.checkpoint import resolve_checkpoint
    from triforce.runtime.config import load_config

    resolve_checkpoint(f"synthetic:{a.config}", load_config(a.config))
    os.sync()
    workers = a.workers or default_workers()
    ways = (("compiles one by one", "first_inference", 0),
            (f"parallel compiles at the first inference ({workers} threads)", "first_inference", workers),
            (f"parallel compiles while loading ({workers} threads)", "while_loading", workers))
    rows, results = [], {}
    for name, way, w in ways:
        fresh = []
        for i in range(2):
            with tempfile.TemporaryDirectory() as cache:
                fresh.append(child(a.config, way, w, cache))
                if i == 1:
                    warm = child(a.config, way, w, cache)
        results[name] = {"way": way, "workers": w, "empty_triton_cache": fresh, "warm_triton_cache": warm}
        for run in fresh:
            rows.append([name, "empty", run["load_s"], run["cold_start_s"] - run["load_s"], run["cold_start_s"],
                         run["peak_gpu_memory_gb"]])
        rows.append([name, "warm", warm["load_s"], warm["cold_start_s"] - warm["load_s"], warm["cold_start_s"],
                     warm["peak_gpu_memory_gb"]])
    rep.print_table(f"cold start, plan A {a.config} (s; fresh processes)",
                    ["way", "Triton cache", "load", "first inference", "cold start", "peak GPU GB"], rows)
    rep.record_run(a.out_dir, "cold_start", {"config": a.config, "ways": results})


if __name__ == "__main__":
    main()
