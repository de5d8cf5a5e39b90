"""`invoke bench`: the fp32 eager reference, the Plan A engine and (optionally) Plan B on the standard workload, in
one run with device events (median of >= 50 timed runs after warm-up), the ratios between them, and the round trip
through the policy server. Records a JSON under bench/results/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import report as rep
from .errors import UnsupportedError
from .timing import time_cuda
from .workload import STANDARD, checked_standard_case

PLANS = ("a", "b", "all")


def _require_gpu():
    import torch

    if not torch.cuda.is_available():
        raise UnsupportedError("invoke bench times the CUDA engines and needs a GPU; none is visible here")


def bench_engines(checkpoint: str, config: str, plan: str, recipe: str, runs: int) -> dict:
    import torch

    from .runtime.checkpoint import load_state, resolve_checkpoint
    from .runtime.config import load_config
    from .runtime.model import ReferencePi05
    from .runtime.policy import Policy

    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = load_config(config)
    path, synthetic = resolve_checkpoint(checkpoint, cfg)
    rng = np.random.default_rng(0)
    checked, noise = checked_standard_case(cfg, rng)
    out = {"config": config, "checkpoint": checkpoint, "synthetic_weights": synthetic, "workload": STANDARD, "runs": runs}
    ref = ReferencePi05(cfg, load_state(path, cfg, device="cuda"), "cuda")
    t = lambda a: torch.from_numpy(a).cuda()  # noqa: E731
    args = (t(checked.images), t(checked.image_masks), t(checked.tokens), t(checked.token_mask), t(noise))
    out["reference_fp32_eager"] = time_cuda(lambda: ref.sample_actions(*args), runs=runs, warmup_s=2.0)
    del ref
    torch.cuda.empty_cache()
    policy_a = Policy.load(checkpoint, config, plan="a")
    out["plan_a_graph"] = time_cuda(policy_a.backend.ready_replay(checked, noise), runs=runs, warmup_s=1.5)
    out["ratio_reference_over_plan_a"] = out["reference_fp32_eager"]["median_ms"] / out["plan_a_graph"]["median_ms"]
    out["plan_a_expert_path"] = policy_a.backend.expert_path
    out["plan_a_denoise_launch"] = policy_a.backend.denoise_launch
    default_path = policy_a.backend.expert_path
    if policy_a.backend.expert_path_refusal("persistent") is None:   # the opt-in persistent expert layer, same run
        policy_a.backend.set_expert_path("persistent")
        out["plan_a_graph_persistent_expert"] = time_cuda(policy_a.backend.ready_replay(checked, noise), runs=runs, warmup_s=1.5)
        out["ratio_persistent_over_default_expert"] = out["plan_a_graph_persistent_expert"]["median_ms"] / out["plan_a_graph"]["median_ms"]
        policy_a.backend.set_expert_path(default_path)
    if plan in ("b", "all"):
        policy_b = Policy.load(checkpoint, config, plan="b", recipe=recipe)
        out["recipe"] = recipe
        out["plan_b_graph"] = time_cuda(policy_b.backend.ready_replay(checked, noise), runs=runs, warmup_s=1.5)
        out["ratio_plan_a_over_plan_b"] = out["plan_a_graph"]["median_ms"] / out["plan_b_graph"]["median_ms"]
    return out


def bench_server(checkpoint: str, config: str, runs: int, timeout_s: float = 300.0) -> dict:
    """Round trip through `serve` (a subprocess on 127.0.0.1, Plan A) vs the server's own timing."""
    from .runtime.config import load_config
    from .server import measure_round_trip

    cfg = load_config(config)
    code = ("import sys; from triforce.server import serve; "
            f"serve({checkpoint!r}, {config!r}, 'a', None, '127.0.0.1', 0)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parent.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        port = _wait_port(proc, timeout_s)
        rng = np.random.default_rng(1)
        keys = {"observation/image": (256, 256, 3), "observation/wrist_image": (256, 256, 3)}

        def make_obs():
            obs = {k: rng.integers(0, 256, shape, dtype=np.uint8) for k, shape in keys.items()}
            obs["observation/state"] = rng.standard_normal(8).astype(np.float32)
            obs["prompt"] = "put the bowl on the plate"
            return obs

        return {"config": cfg.name, **measure_round_trip("127.0.0.1", port, runs, make_obs, warmup=3)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_port(proc, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        m = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
        if m:
            return int(m.group(1))
    raise RuntimeError("policy server did not start: " + " | ".join(lines[-5:]))


def run(checkpoint: str, config: str, plan: str, recipe: str, runs: int, out_dir: str, server: bool, command: str) -> tuple[dict, Path]:
    if plan not in PLANS:
        raise UnsupportedError(f"unknown --plan '{plan}': choose one of {', '.join(PLANS)}")
    if runs < 50:
        raise UnsupportedError(f"--runs {runs}: benchmarks time at least 50 runs after warm-up")
    _require_gpu()
    result = {**rep.stamp(command), "engines": bench_engines(checkpoint, config, plan, recipe, runs)}
    if result["engines"]["synthetic_weights"]:
        result["note"] = rep.RANDOM_WEIGHTS_NOTE
    if server:
        result["server"] = bench_server(checkpoint, config, runs)
    path = rep.write_record(out_dir, f"pi05-{config}-plan{plan}", result)
    return result, path


def print_summary(result: dict) -> None:
    e = result["engines"]
    rows = [["fp32 eager reference", e["reference_fp32_eager"]["median_ms"], ""],
            ["Plan A (one CUDA graph)", e["plan_a_graph"]["median_ms"], f"{e['ratio_reference_over_plan_a']:.1f}x faster than the reference"]]
    if "plan_a_graph_persistent_expert" in e:
        rows.append(["Plan A, persistent expert layers (opt-in)", e["plan_a_graph_persistent_expert"]["median_ms"],
                     f"{e['ratio_persistent_over_default_expert']:.2f}x the {e['plan_a_expert_path']} time"])
    if "plan_b_graph" in e:
        rows.append([f"Plan B ({e['recipe']})", e["plan_b_graph"]["median_ms"], f"{e['ratio_plan_a_over_plan_b']:.2f}x vs Plan A"])
    if "server" in result:
        s = result["server"]
        rows.append(["server round trip (Plan A)", s["round_trip_ms"], f"server {s['server_infer_ms']:.2f} ms, overhead {s['overhead_ms']:.2f} ms"])
    rep.print_table(f"bench — {e['config']} on {result['device']['gpu']} (median ms of {e['runs']} runs)", ["what", "median ms", "note"], rows)
