"""Model configurations as data (triforce/data/models.toml). No torch here: Phase 0 and the server read it too."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources

from ..errors import TriforceError


@dataclass(frozen=True)
class TowerConfig:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int = 0   # 0: same as num_heads (SigLIP)
    head_dim: int = 0       # 0: width // num_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.width // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads


@dataclass(frozen=True)
class ModelConfig:
    name: str
    image_slots: tuple
    image_size: int
    patch_size: int
    action_dim: int
    action_horizon: int
    num_steps: int
    max_token_len: int
    state_in_prompt: bool
    vocab_size: int
    norm_eps: float
    rope_base: float
    time_min_period: float
    time_max_period: float
    token_buckets: tuple
    vision: TowerConfig
    prefix: TowerConfig
    expert: TowerConfig

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def token_bucket(self, n_tokens: int) -> int:
        return next(b for b in self.token_buckets if b >= n_tokens)


def _table() -> dict:
    return tomllib.loads(resources.files("triforce.data").joinpath("models.toml").read_text())


def config_names() -> list[str]:
    return [k for k in _table() if k != "defaults"]


def load_config(name: str) -> ModelConfig:
    table = _table()
    if name not in table or name == "defaults":
        raise TriforceError(f"unknown model config '{name}': choose one of {', '.join(config_names())}")
    spec = {**table["defaults"], **table[name]}
    for tower in ("vision", "prefix", "expert"):
        spec[tower] = TowerConfig(**spec[tower])
    spec["image_slots"] = tuple(spec["image_slots"])
    spec["token_buckets"] = tuple(sorted(spec["token_buckets"]))
    cfg = ModelConfig(name=name, **spec)
    _check(cfg)
    return cfg


def _check(cfg: ModelConfig) -> None:
    """The joint attention needs the expert and the prefix to share heads and head size."""
    if not cfg.token_buckets or cfg.token_buckets[-1] != cfg.max_token_len:
        raise TriforceError(f"config {cfg.name}: token_buckets must end at max_token_len={cfg.max_token_len}")
    p, e = cfg.prefix, cfg.expert
    if (p.num_heads, p.kv_heads, p.dim_head) != (e.num_heads, e.kv_heads, e.dim_head):
        raise TriforceError(f"config {cfg.name}: prefix and expert attention shapes differ")
