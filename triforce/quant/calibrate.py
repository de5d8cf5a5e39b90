"""Calibration: run the reference model on observations and keep, per GEMM layer (engine ids, engine-domain
inputs), the activation abs-max (FP8/NVFP4 scales), the per-channel mean |x| (AWQ) and a sample of rows; and for
the layers whose output the engine writes in E4M3 (quantize.E4M3_OUTPUTS), the per-channel abs-max of that output."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import TriforceError
from ..runtime.observation import check_observation
from ..workload import random_noise, random_observation

SAMPLE_ROWS = 256


class ActivationStats:
    def __init__(self, sample_rows: int = SAMPLE_ROWS, seed: int = 0):
        self.amax: dict = {}
        self.chan_amax: dict = {}
        self.divisor: dict = {}    # AWQ: the layer reads x / s; set when its weights are smoothed
        self.out_chan_amax: dict = {}
        self.out_divisor: dict = {}  # AWQ: the layer's output channels divided by s (the next layer's smoothing)
        self.abs_sum: dict = {}
        self.count: dict = {}
        self.samples: dict = {}
        self.sample_rows = sample_rows
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, layer_id: str, x: torch.Tensor):
        x = x.detach().float().reshape(-1, x.shape[-1])
        if not torch.isfinite(x).all():
            raise TriforceError(f"calibration: non-finite activations at the input of {layer_id} (weights with inf/NaN?)")
        self.amax[layer_id] = max(self.amax.get(layer_id, 0.0), float(x.abs().max()))
        cmax = x.abs().amax(0).cpu()
        self.chan_amax[layer_id] = torch.maximum(self.chan_amax.get(layer_id, cmax), cmax)
        self.abs_sum[layer_id] = self.abs_sum.get(layer_id, 0) + x.abs().sum(0).cpu()
        self.count[layer_id] = self.count.get(layer_id, 0) + x.shape[0]
        pick = torch.randperm(x.shape[0], generator=self.gen)[: self.sample_rows]
        rows = torch.cat([self.samples.get(layer_id, x[:0].cpu()), x[pick.to(x.device)].cpu()])
        self.samples[layer_id] = rows[-self.sample_rows:]

    def output(self, layer_id: str, y: torch.Tensor):
        """The layer's real output (bias excluded): only its per-channel abs-max is kept."""
        y = y.detach().float().reshape(-1, y.shape[-1])
        if not torch.isfinite(y).all():
            raise TriforceError(f"calibration: non-finite activations at the output of {layer_id} (weights with inf/NaN?)")
        cmax = y.abs().amax(0).cpu()
        self.out_chan_amax[layer_id] = torch.maximum(self.out_chan_amax.get(layer_id, cmax), cmax)

    def smooth_output(self, layer_id: str, s: torch.Tensor) -> None:
        """Record that the layer's output channels are now divided by s (its weight rows were)."""
        self.out_divisor[layer_id] = s.float().cpu()

    def output_chan_amax(self, layer_id: str):
        """Per-channel abs-max of the layer's output as the smoothed weights produce it, or None if never seen."""
        if layer_id not in self.out_chan_amax:
            return None
        return self.out_chan_amax[layer_id] / self.out_divisor.get(layer_id, 1.0)

    def mean_abs(self, layer_id: str) -> torch.Tensor:
        return self.abs_sum[layer_id] / self.count[layer_id]

    def smooth(self, layer_id: str, s: torch.Tensor) -> None:
        """Record that the layer now reads x / s (s per input channel)."""
        self.divisor[layer_id] = s.float().cpu()
        self.samples[layer_id] = self.samples[layer_id] / self.divisor[layer_id]

    def input_amax(self, layer_id: str):
        """abs-max of what the layer reads (after smoothing), or None if never seen."""
        if layer_id not in self.amax:
            return None
        if layer_id in self.divisor:
            return float((self.chan_amax[layer_id] / self.divisor[layer_id]).max())
        return self.amax[layer_id]


def calibrate(model, cfg, observations: int, seed: int = 0) -> ActivationStats:
    """Activation statistics over `observations` random observations of the standard workload (2 views, 16 tokens).
    Zero observations is an error: scales would be undefined."""
    if observations < 1:
        raise TriforceError("calibration needs at least one observation (--calibration >= 1)")
    stats = ActivationStats(seed=seed)
    rng = np.random.default_rng(seed + 7)
    model.recorder = stats
    try:
        for _ in range(observations):
            obs = check_observation(random_observation(cfg, rng, 2, min(16, cfg.max_token_len)), cfg)
            t = lambda a: torch.from_numpy(a).to(model.device)  # noqa: E731
            model.sample_actions(t(obs.images), t(obs.image_masks), t(obs.tokens), t(obs.token_mask),
                                 t(random_noise(cfg, rng)))
    finally:
        model.recorder = None
    return stats
