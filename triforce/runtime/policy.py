"""The Policy API: Policy.load(checkpoint, config, plan) and policy.infer(observation) -> actions."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import TriforceError, UnsupportedError
from .checkpoint import load_state, resolve_checkpoint
from .config import ModelConfig, load_config
from .observation import Observation, check_noise, check_observation

PLANS = ("ref", "a", "b")


def require_cuda(what: str):
    import torch

    if not torch.cuda.is_available():
        raise UnsupportedError(f"{what} needs a CUDA GPU and none is visible here; on CPU use --plan ref (the fp32 reference)")


class Policy:
    """One loaded model behind one of the plans: 'ref' (fp32 eager), 'a' (bf16 one-graph engine), 'b' (quantized)."""

    def __init__(self, cfg: ModelConfig, backend, plan: str, synthetic: bool, checkpoint_path: Path, load_seconds: float):
        self.config = cfg
        self.backend = backend
        self.plan = plan
        self.synthetic = synthetic
        self.checkpoint_path = checkpoint_path
        self.checkpoint_dir = None if synthetic else checkpoint_path.parent
        self.load_seconds = load_seconds
        self._rng = np.random.default_rng()

    @classmethod
    def load(cls, checkpoint: str, config: str, plan: str = "a", device: str | None = None, recipe=None, **options) -> "Policy":
        if plan not in PLANS:
            raise TriforceError(f"unknown plan '{plan}': choose one of {', '.join(PLANS)}")
        cfg = load_config(config)
        start = time.perf_counter()
        if plan in ("a", "b"):
            require_cuda(f"plan {plan} (the bf16/quantized CUDA-graph engine)")
            if device not in (None, "cuda") and not str(device).startswith("cuda"):
                raise UnsupportedError(f"plan {plan} runs on a CUDA device, not '{device}'")
        path, synthetic = resolve_checkpoint(checkpoint, cfg)
        backend = _make_backend(cfg, path, plan, device, recipe, options)
        return cls(cfg, backend, plan, synthetic, path, time.perf_counter() - start)

    def infer(self, obs: Observation, noise=None) -> np.ndarray:
        """Actions [action_horizon, action_dim] (float32, normalized space) for one observation."""
        checked = check_observation(obs, self.config)
        noise = check_noise(noise, self.config)
        if noise is None:
            noise = self._rng.standard_normal((self.config.action_horizon, self.config.action_dim)).astype(np.float32)
        return self.backend.infer(checked, noise)


def _make_backend(cfg, path, plan, device, recipe, options):
    import torch

    if plan == "ref":
        from .model import ReferencePi05

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return ReferenceBackend(ReferencePi05(cfg, load_state(path, cfg), dev))
    from .engine import Pi05Engine

    if plan == "b":
        from ..quant.plan_b import prepare_plan_b

        quant, state = prepare_plan_b(cfg, path, recipe, **options)
        return Pi05Engine(cfg, state, quant=quant)
    if recipe is not None:
        raise TriforceError("a recipe applies to plan b only")
    return Pi05Engine.compiling_while_loading(cfg, lambda: load_state(path, cfg, device="cuda"), **options)


class ReferenceBackend:
    def __init__(self, model):
        self.model = model

    def infer(self, obs, noise) -> np.ndarray:
        import torch

        dev = self.model.device
        out = self.model.sample_actions(
            torch.from_numpy(obs.images).to(dev), torch.from_numpy(obs.image_masks).to(dev),
            torch.from_numpy(obs.tokens).to(dev), torch.from_numpy(obs.token_mask).to(dev),
            torch.from_numpy(noise).to(dev))
        return out.float().cpu().numpy()
