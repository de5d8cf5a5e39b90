"""The standard workload (DESIGN.md §4) and random observations for validation and benchmarks."""

from __future__ import annotations

import numpy as np

from .runtime.config import ModelConfig
from .runtime.observation import CheckedObservation, Observation, check_observation

STANDARD = {"config": "pi05_libero", "real_views": 2, "prompt_tokens": 16, "also_prompt_tokens": 48}


def random_observation(cfg: ModelConfig, rng: np.random.Generator, real_views: int = 2, prompt_tokens: int = 16) -> Observation:
    """`real_views` random images in [-1, 1] (the remaining slots masked), a random prompt of `prompt_tokens` ids in
    max_token_len slots."""
    images = {slot: rng.uniform(-1, 1, (cfg.image_size, cfg.image_size, 3)).astype(np.float32)
              for slot in cfg.image_slots[:real_views]}
    tokens = np.zeros(cfg.max_token_len, np.int64)
    mask = np.zeros(cfg.max_token_len, bool)
    tokens[:prompt_tokens] = rng.integers(0, cfg.vocab_size, prompt_tokens)
    mask[:prompt_tokens] = True
    return Observation(images=images, tokens=tokens, token_mask=mask)


def random_noise(cfg: ModelConfig, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((cfg.action_horizon, cfg.action_dim)).astype(np.float32)


def standard_case(cfg: ModelConfig, rng: np.random.Generator) -> tuple[Observation, np.ndarray]:
    """(observation, noise) of the standard workload: its real views and prompt length (within max_token_len)."""
    obs = random_observation(cfg, rng, STANDARD["real_views"], min(STANDARD["prompt_tokens"], cfg.max_token_len))
    return obs, random_noise(cfg, rng)


def checked_standard_case(cfg: ModelConfig, rng: np.random.Generator) -> tuple[CheckedObservation, np.ndarray]:
    """standard_case already checked: what the engine's timing calls take."""
    obs, noise = standard_case(cfg, rng)
    return check_observation(obs, cfg), noise


def standard_policy(plan: str, recipe: str | None):
    """The standard workload's synthetic policy (Plan A, or Plan B with `recipe`) and its checked case (seed 0):
    what the bench scripts that time one engine start from."""
    from .runtime.policy import Policy   # here, not at the top: it brings torch

    config = STANDARD["config"]
    policy = Policy.load(f"synthetic:{config}", config, plan=plan, recipe=recipe if plan == "b" else None)
    obs, noise = checked_standard_case(policy.config, np.random.default_rng(0))
    return policy, obs, noise


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
