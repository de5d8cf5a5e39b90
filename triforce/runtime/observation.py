"""What one inference consumes, and its validation (every bad input is a one-line TriforceError)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import TriforceError
from .config import ModelConfig


@dataclass
class Observation:
    """images: slot -> float32 [H, W, 3] in [-1, 1]; a slot absent from `images` is a masked zero image.
    tokens/token_mask: the tokenized prompt padded to max_token_len (valid tokens first)."""

    images: dict
    tokens: np.ndarray
    token_mask: np.ndarray
    image_masks: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CheckedObservation:
    images: np.ndarray       # float32 [slots, H, W, 3]
    image_masks: np.ndarray  # bool [slots]
    tokens: np.ndarray       # int64 [max_token_len]
    token_mask: np.ndarray   # bool [max_token_len]

    @property
    def num_tokens(self) -> int:
        return int(self.token_mask.sum())


def check_observation(obs: Observation, cfg: ModelConfig) -> CheckedObservation:
    size = cfg.image_size
    unknown = set(obs.images) - set(cfg.image_slots)
    if unknown:
        raise TriforceError(f"unknown image slot(s) {sorted(unknown)}: {cfg.name} has {list(cfg.image_slots)}")
    if not obs.images:
        raise TriforceError("observation has no images: at least one view is required")
    images = np.zeros((len(cfg.image_slots), size, size, 3), np.float32)
    masks = np.zeros(len(cfg.image_slots), bool)
    for i, slot in enumerate(cfg.image_slots):
        if slot not in obs.images:
            continue
        img = np.asarray(obs.images[slot])
        if img.shape != (size, size, 3):
            raise TriforceError(f"image '{slot}' has shape {img.shape}, expected ({size}, {size}, 3) (resize with pad first)")
        if not np.issubdtype(img.dtype, np.floating):
            raise TriforceError(f"image '{slot}' has dtype {img.dtype}, expected float in [-1, 1] (convert uint8 with x/127.5-1)")
        if not np.isfinite(img).all():
            raise TriforceError(f"image '{slot}' contains NaN or inf")
        if img.min() < -1.0001 or img.max() > 1.0001:
            raise TriforceError(f"image '{slot}' has values in [{img.min():.3g}, {img.max():.3g}], expected [-1, 1]")
        images[i] = img
        masks[i] = bool(obs.image_masks.get(slot, True))
    if not masks.any():
        raise TriforceError("every image slot is masked: at least one view must be valid")
    tokens, token_mask = _check_tokens(obs, cfg)
    return CheckedObservation(images, masks, tokens, token_mask)


def _check_tokens(obs: Observation, cfg: ModelConfig):
    tokens = np.asarray(obs.tokens)
    mask = np.asarray(obs.token_mask)
    if tokens.ndim != 1 or mask.shape != tokens.shape:
        raise TriforceError(f"tokens {tokens.shape} and token_mask {mask.shape} must be 1-D and of the same length")
    if tokens.shape[0] > cfg.max_token_len:
        raise TriforceError(f"prompt of {tokens.shape[0]} tokens is longer than max_token_len={cfg.max_token_len} of {cfg.name}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise TriforceError(f"tokens have dtype {tokens.dtype}, expected integer token ids")
    mask = mask.astype(bool)
    if mask.sum() == 0:
        raise TriforceError("the prompt is empty: token_mask has no valid token")
    n = int(mask.sum())
    if not mask[:n].all():
        raise TriforceError("token_mask must mark a prefix of the tokens (valid tokens first, padding after)")
    valid = tokens[mask]
    if valid.min() < 0 or valid.max() >= cfg.vocab_size:
        raise TriforceError(f"token id out of vocabulary [0, {cfg.vocab_size}): min {valid.min()}, max {valid.max()}")
    padded = np.zeros(cfg.max_token_len, np.int64)
    padded_mask = np.zeros(cfg.max_token_len, bool)
    padded[: tokens.shape[0]] = np.where(mask, tokens, 0)
    padded_mask[: tokens.shape[0]] = mask
    return padded, padded_mask


def check_noise(noise, cfg: ModelConfig):
    if noise is None:
        return None
    noise = np.asarray(noise, np.float32)
    if noise.shape != (cfg.action_horizon, cfg.action_dim):
        raise TriforceError(f"noise has shape {noise.shape}, expected ({cfg.action_horizon}, {cfg.action_dim})")
    if not np.isfinite(noise).all():
        raise TriforceError("noise contains NaN or inf")
    return noise
