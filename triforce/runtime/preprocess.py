"""openpi observation dict -> the runtime's Observation, and the model's actions -> what the client executes.

What each config reads is declared in triforce/data/io_specs.toml. The arithmetic follows openpi's pi05 pipeline:
images parsed to uint8 HWC (floats in [0, 1] scaled by 255, CHW transposed), resized with pad to the model size
(bilinear, centred, zero padding), then uint8 -> x / 255 * 2 - 1; the state concatenated from its keys and, when the
model puts it in the prompt, quantile-normalized ((x - q01) / (q99 - q01 + 1e-6) * 2 - 1); actions quantile-
unnormalized ((x + 1) / 2 * (q99 - q01 + 1e-6) + q01 on the dimensions the stats cover) and cut to the env's dims.
Without norm stats (synthetic weights) both are identity, and the server's metadata says so.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import TriforceError
from .observation import Observation
from .tokenizer import PromptTokenizer

QUANTILE_EPS = 1e-6  # openpi adds it to (q99 - q01) both ways


@cache
def _io_table() -> dict:
    return tomllib.loads(resources.files("triforce.data").joinpath("io_specs.toml").read_text())


@dataclass(frozen=True)
class IOSpec:
    config: str
    env: str
    images: dict        # model slot -> observation key
    state: dict         # observation key -> length, in concatenation order
    action_dims: int
    asset_id: str

    @property
    def state_dim(self) -> int:
        return sum(self.state.values())


def load_io_spec(config: str) -> IOSpec:
    table = _io_table()
    if config not in table["config"]:
        raise TriforceError(f"no I/O spec for model config '{config}': add a [config.{config}] table to "
                            f"triforce/data/io_specs.toml (served: {', '.join(table['config'])})")
    entry = table["config"][config]
    env = table["env"][entry["env"]]
    return IOSpec(config=config, env=entry["env"], images=dict(env["images"]), state=dict(env["state"]),
                  action_dims=env["action_dims"], asset_id=entry["asset_id"])


# ── norm stats ──────────────────────────────────────────────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class Quantiles:
    q01: np.ndarray
    q99: np.ndarray


def norm_stats_path(checkpoint_dir: Path, asset_id: str) -> Path:
    return Path(checkpoint_dir) / "assets" / asset_id / "norm_stats.json"


def load_norm_stats(path: Path) -> dict[str, Quantiles]:
    """openpi's norm_stats.json ({"norm_stats": {"state": {...}, "actions": {...}}}) -> quantiles of both."""
    path = Path(path)
    if not path.is_file():
        raise TriforceError(f"no norm stats at {path}: copy the checkpoint's assets/<asset_id>/norm_stats.json there "
                            f"or pass --norm-stats")
    try:
        stats = json.loads(path.read_text())["norm_stats"]
        out = {name: Quantiles(np.asarray(stats[name]["q01"], np.float64), np.asarray(stats[name]["q99"], np.float64))
               for name in ("state", "actions")}
    except (ValueError, KeyError, TypeError) as err:
        raise TriforceError(f"{path} is not openpi quantile norm stats (missing or bad {err}): pi05 needs q01/q99 "
                            f"for state and actions") from None
    for name, q in out.items():
        if q.q01.ndim != 1 or q.q01.shape != q.q99.shape or q.q01.size == 0 or not np.isfinite([q.q01, q.q99]).all():
            raise TriforceError(f"{path}: {name} q01/q99 must be finite 1-D lists of one length")
        if (q.q99 < q.q01).any():
            raise TriforceError(f"{path}: {name} has q99 below q01 in dims {np.flatnonzero(q.q99 < q.q01).tolist()}")
    return out


def normalize_state(state: np.ndarray, q: Quantiles) -> np.ndarray:
    if q.q01.size < state.size:
        raise TriforceError(f"state has {state.size} dims but the norm stats cover {q.q01.size}: wrong asset_id?")
    q01, q99 = q.q01[: state.size], q.q99[: state.size]
    return (state - q01) / (q99 - q01 + QUANTILE_EPS) * 2.0 - 1.0


def unnormalize_actions(actions: np.ndarray, q: Quantiles) -> np.ndarray:
    dim = min(q.q01.size, actions.shape[-1])
    out = np.array(actions, np.float64)
    out[..., :dim] = (out[..., :dim] + 1.0) / 2.0 * (q.q99[:dim] - q.q01[:dim] + QUANTILE_EPS) + q.q01[:dim]
    return out


# ── images ──────────────────────────────────────────────────────────────────────────────────────────────────────────
def parse_image(value, key: str) -> np.ndarray:
    """Client image -> uint8 [H, W, 3] (floats in [0, 1] are scaled by 255, CHW transposed)."""
    img = np.asarray(value)
    if img.ndim != 3:
        raise TriforceError(f"'{key}' has shape {img.shape}: expected an image [H, W, 3] (or [3, H, W])")
    if img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    if img.shape[-1] != 3 or min(img.shape[:2]) < 1:
        raise TriforceError(f"'{key}' has shape {img.shape}: expected an RGB image [H, W, 3]")
    if np.issubdtype(img.dtype, np.floating):
        if not np.isfinite(img).all() or img.min() < 0.0 or img.max() > 1.0:
            raise TriforceError(f"'{key}' is a float image outside [0, 1]: send uint8 or floats in [0, 1]")
        img = (255 * img).astype(np.uint8)
    if img.dtype != np.uint8:
        raise TriforceError(f"'{key}' has dtype {img.dtype}: send uint8 (or floats in [0, 1])")
    return img


def resize_with_pad(img: np.ndarray, size: int) -> np.ndarray:
    """Fit inside size x size keeping the aspect ratio (bilinear), centred on black: tf.image.resize_with_pad as
    openpi does it with PIL, including its integer rounding."""
    from PIL import Image

    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    ratio = max(w / size, h / size)
    new_h, new_w = int(h / ratio), int(w / ratio)
    if min(new_h, new_w) < 1:
        raise TriforceError(f"image of {h}x{w} pixels vanishes when fitted into {size}x{size}: send a camera image")
    resized = np.asarray(Image.fromarray(img).resize((new_w, new_h), resample=Image.BILINEAR))
    out = np.zeros((size, size, 3), np.uint8)
    top, left = max(0, int((size - new_h) / 2)), max(0, int((size - new_w) / 2))
    out[top: top + new_h, left: left + new_w] = resized
    return out


def to_unit_range(img: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1]."""
    return img.astype(np.float32) / 255.0 * 2.0 - 1.0


# ── observation and actions ─────────────────────────────────────────────────────────────────────────────────────────
class Preprocessor:
    """One model config's client I/O: `observation(dict) -> Observation`, `actions(raw) -> client actions`."""

    def __init__(self, spec: IOSpec, cfg, tokenizer: PromptTokenizer | None, norm_stats: dict[str, Quantiles] | None):
        unknown = set(spec.images) - set(cfg.image_slots)
        if unknown:
            raise TriforceError(f"io_specs.toml maps {sorted(unknown)} for {cfg.name}, which has slots "
                                f"{list(cfg.image_slots)}: fix triforce/data/io_specs.toml")
        if spec.action_dims > cfg.action_dim:
            raise TriforceError(f"io_specs.toml returns {spec.action_dims} action dims, {cfg.name} predicts "
                                f"{cfg.action_dim}: fix triforce/data/io_specs.toml")
        self.spec, self.cfg, self.tokenizer, self.norm_stats = spec, cfg, tokenizer, norm_stats

    def observation(self, obs) -> Observation:
        if not isinstance(obs, dict):
            raise TriforceError(f"observation is a {type(obs).__name__}: send a dict of openpi keys "
                                f"({', '.join(self.expected_keys())})")
        missing = [k for k in (*self.spec.images.values(), *self.spec.state) if k not in obs]
        if missing:
            raise TriforceError(f"observation lacks {missing} for {self.cfg.name} ({self.spec.env} keys: "
                                f"{', '.join(self.expected_keys())})")
        images = {slot: to_unit_range(resize_with_pad(parse_image(obs[key], key), self.cfg.image_size))
                  for slot, key in self.spec.images.items()}
        tokens, token_mask = self._prompt(obs, self.state(obs))
        return Observation(images=images, image_masks={slot: True for slot in images}, tokens=tokens,
                           token_mask=token_mask)

    def state(self, obs: dict) -> np.ndarray:
        parts = []
        for key, length in self.spec.state.items():
            try:
                part = np.asarray(obs[key], np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise TriforceError(f"'{key}' is not numeric: expected {length} floats") from None
            if part.size != length or not np.isfinite(part).all():
                raise TriforceError(f"'{key}' has {part.size} values{'' if np.isfinite(part).all() else ' (NaN/inf)'}: "
                                    f"expected {length} finite floats")
            parts.append(part)
        return np.concatenate(parts)

    def _prompt(self, obs: dict, state: np.ndarray):
        if "tokenized_prompt" in obs or "tokenized_prompt_mask" in obs:
            return self._pretokenized(obs)
        if "prompt" not in obs:
            raise TriforceError("observation has no 'prompt': send the task instruction as a string")
        prompt = obs["prompt"]
        if isinstance(prompt, np.ndarray) and prompt.ndim == 0:
            prompt = prompt.item()
        if isinstance(prompt, bytes):
            prompt = prompt.decode("utf-8", errors="strict")
        if not isinstance(prompt, str):
            raise TriforceError(f"'prompt' is a {type(prompt).__name__}: send a string")
        if self.tokenizer is None:
            raise TriforceError("this server has no tokenizer (real checkpoint, no --tokenizer file): restart it with "
                                "--tokenizer <paligemma_tokenizer.model>, or send tokenized_prompt/tokenized_prompt_mask")
        if not self.cfg.state_in_prompt:
            return self.tokenizer.tokenize(prompt, None)
        quantiles = self.norm_stats["state"] if self.norm_stats else None
        return self.tokenizer.tokenize(prompt, normalize_state(state, quantiles) if quantiles else state)

    def _pretokenized(self, obs: dict):
        if "prompt" in obs:
            raise TriforceError("observation has both 'prompt' and 'tokenized_prompt': send one of them")
        if "tokenized_prompt" not in obs or "tokenized_prompt_mask" not in obs:
            raise TriforceError("send 'tokenized_prompt' and 'tokenized_prompt_mask' together")
        tokens, mask = np.asarray(obs["tokenized_prompt"]), np.asarray(obs["tokenized_prompt_mask"])
        if not np.issubdtype(tokens.dtype, np.integer) or mask.dtype != np.bool_:
            raise TriforceError(f"tokenized_prompt must be integers and tokenized_prompt_mask booleans "
                                f"(got {tokens.dtype}, {mask.dtype})")
        return tokens, mask

    def actions(self, raw: np.ndarray) -> np.ndarray:
        """Model actions [horizon, action_dim] (normalized) -> [horizon, action_dims] in the robot's units."""
        raw = np.asarray(raw)
        if raw.shape != (self.cfg.action_horizon, self.cfg.action_dim):
            raise TriforceError(f"policy returned actions of shape {raw.shape}, expected "
                                f"({self.cfg.action_horizon}, {self.cfg.action_dim})")
        out = unnormalize_actions(raw, self.norm_stats["actions"]) if self.norm_stats else raw
        return np.asarray(out[:, : self.spec.action_dims], np.float32)

    def expected_keys(self) -> list[str]:
        return [*self.spec.images.values(), *self.spec.state, "prompt"]

    def describe(self) -> dict:
        """What a client needs to know, sent as part of the metadata on connect."""
        return {
            "config": self.cfg.name, "env": self.spec.env, "observation_keys": self.expected_keys(),
            "image_size": self.cfg.image_size, "action_horizon": self.cfg.action_horizon,
            "action_dims": self.spec.action_dims, "state_dim": self.spec.state_dim,
            "state_in_prompt": self.cfg.state_in_prompt, "max_token_len": self.cfg.max_token_len,
            "tokenizer": self.tokenizer.kind if self.tokenizer else None,
            "actions_unnormalized": self.norm_stats is not None,
        }
