"""`invoke infer`: one inference on a random observation, with the plan and timing said out loud."""

from __future__ import annotations

import time

import numpy as np

from .errors import UnsupportedError
from .runtime.policy import Policy
from .workload import random_noise, random_observation


def choose_plan(plan: str | None, device: str | None) -> str:
    """An explicit plan is honoured or refused; without one, the engine when a GPU is the target, else the reference."""
    if plan:
        return plan
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return "ref"
    return "a"


def run_once(checkpoint: str, config: str, plan: str | None, device: str | None, recipe: str | None, seed: int) -> dict:
    plan = choose_plan(plan, device)
    if plan != "ref" and device == "cpu":
        raise UnsupportedError(f"plan {plan} is a CUDA-graph engine and cannot run on --device cpu; use --plan ref on CPU")
    start = time.perf_counter()
    policy = Policy.load(checkpoint, config, plan=plan, device=device, recipe=recipe)
    load_s = time.perf_counter() - start
    cfg = policy.config
    rng = np.random.default_rng(seed)
    obs = random_observation(cfg, rng, min(2, len(cfg.image_slots)), min(16, cfg.max_token_len))
    noise = random_noise(cfg, rng)
    start = time.perf_counter()
    actions = policy.infer(obs, noise)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    policy.infer(obs, noise)
    second_s = time.perf_counter() - start
    return {"plan": plan, "config": cfg.name, "synthetic": policy.synthetic, "shape": actions.shape,
            "finite": bool(np.isfinite(actions).all()), "load_s": load_s, "first_ms": first_s * 1e3,
            "second_ms": second_s * 1e3, "device": device or ("cuda" if plan != "ref" else str(policy.backend.model.device))}


def describe(r: dict) -> str:
    weights = "synthetic weights" if r["synthetic"] else "real weights"
    return (f"plan {r['plan']} ({weights}) on {r['device']}: actions {tuple(r['shape'])} "
            f"({'finite' if r['finite'] else 'NOT FINITE'}); load {r['load_s']:.2f} s, first inference "
            f"{r['first_ms']:.1f} ms, second {r['second_ms']:.1f} ms (wall clock)")
