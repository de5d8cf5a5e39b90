"""Strict loading of openpi Pi0.5 checkpoints (model.safetensors), and the synthetic checkpoint written in that format.

The expected tensor set is derived from the model config in openpi's naming (DESIGN.md §3). Any missing, unexpected,
mis-shaped or mis-typed tensor is an error that lists them; the only tolerated extra is the expert's unused lm_head.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import TriforceError
from .config import ModelConfig, load_config

PG = "paligemma_with_expert.paligemma"
EXPERT = "paligemma_with_expert.gemma_expert"
VISION = f"{PG}.model.vision_tower.vision_model"
LANG = f"{PG}.model.language_model"
TOKEN_EMBEDDING = f"{PG}.lm_head.weight"
IGNORED = {f"{EXPERT}.lm_head.weight"}  # openpi writes it; inference never reads it
SYNTHETIC_PREFIX = "synthetic:"

F32, BF16 = "float32", "bfloat16"


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of every tensor inference reads, in openpi's naming and dtypes."""
    v, p, e = cfg.vision, cfg.prefix, cfg.expert
    spec: dict[str, tuple[tuple[int, ...], str]] = {}

    def add(name, shape, dtype):
        spec[name] = (tuple(shape), dtype)

    add(f"{VISION}.embeddings.patch_embedding.weight", (v.width, 3, cfg.patch_size, cfg.patch_size), F32)
    add(f"{VISION}.embeddings.patch_embedding.bias", (v.width,), F32)
    add(f"{VISION}.embeddings.position_embedding.weight", (cfg.tokens_per_image, v.width), F32)
    for i in range(v.depth):
        layer = f"{VISION}.encoder.layers.{i}"
        for norm in ("layer_norm1", "layer_norm2"):
            add(f"{layer}.{norm}.weight", (v.width,), BF16)
            add(f"{layer}.{norm}.bias", (v.width,), BF16)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            add(f"{layer}.self_attn.{proj}.weight", (v.width, v.width), BF16)
            add(f"{layer}.self_attn.{proj}.bias", (v.width,), BF16)
        add(f"{layer}.mlp.fc1.weight", (v.mlp_dim, v.width), BF16)
        add(f"{layer}.mlp.fc1.bias", (v.mlp_dim,), BF16)
        add(f"{layer}.mlp.fc2.weight", (v.width, v.mlp_dim), BF16)
        add(f"{layer}.mlp.fc2.bias", (v.width,), BF16)
    add(f"{VISION}.post_layernorm.weight", (v.width,), BF16)
    add(f"{VISION}.post_layernorm.bias", (v.width,), BF16)
    add(f"{PG}.model.multi_modal_projector.linear.weight", (p.width, v.width), BF16)
    add(f"{PG}.model.multi_modal_projector.linear.bias", (p.width,), BF16)
    add(TOKEN_EMBEDDING, (cfg.vocab_size, p.width), BF16)

    for prefix, tower, ada in ((f"{LANG}", p, False), (f"{EXPERT}.model", e, True)):
        for i in range(tower.depth):
            layer = f"{prefix}.layers.{i}"
            for norm in ("input_layernorm", "post_attention_layernorm"):
                _add_norm(add, f"{layer}.{norm}", tower.width, ada)
            q_out, kv_out = tower.num_heads * tower.dim_head, tower.kv_heads * tower.dim_head
            add(f"{layer}.self_attn.q_proj.weight", (q_out, tower.width), BF16)
            add(f"{layer}.self_attn.k_proj.weight", (kv_out, tower.width), BF16)
            add(f"{layer}.self_attn.v_proj.weight", (kv_out, tower.width), BF16)
            add(f"{layer}.self_attn.o_proj.weight", (tower.width, q_out), BF16)
            add(f"{layer}.mlp.gate_proj.weight", (tower.mlp_dim, tower.width), BF16)
            add(f"{layer}.mlp.up_proj.weight", (tower.mlp_dim, tower.width), BF16)
            add(f"{layer}.mlp.down_proj.weight", (tower.width, tower.mlp_dim), BF16)
        _add_norm(add, f"{prefix}.norm", tower.width, ada)

    add("action_in_proj.weight", (e.width, cfg.action_dim), F32)
    add("action_in_proj.bias", (e.width,), F32)
    add("action_out_proj.weight", (cfg.action_dim, e.width), F32)
    add("action_out_proj.bias", (cfg.action_dim,), F32)
    add("time_mlp_in.weight", (e.width, e.width), F32)
    add("time_mlp_in.bias", (e.width,), F32)
    add("time_mlp_out.weight", (e.width, e.width), F32)
    add("time_mlp_out.bias", (e.width,), F32)
    return spec


def _add_norm(add, name: str, width: int, ada: bool) -> None:
    """Gemma RMSNorm has a (1 + w) weight; the expert's adaRMSNorm has a Dense(width -> 3 width) of the time condition."""
    if ada:
        add(f"{name}.dense.weight", (3 * width, width), F32)
        add(f"{name}.dense.bias", (3 * width,), F32)
    else:
        add(f"{name}.weight", (width,), F32)


def resolve_checkpoint(checkpoint: str, cfg: ModelConfig) -> tuple[Path, bool]:
    """(path to model.safetensors, synthetic?) for `synthetic:<config>`, a checkpoint dir, or a .safetensors file."""
    if checkpoint.startswith(SYNTHETIC_PREFIX):
        name = checkpoint[len(SYNTHETIC_PREFIX):]
        if name != cfg.name:
            raise TriforceError(f"checkpoint {checkpoint} is for config '{name}' but config '{cfg.name}' was requested")
        return write_synthetic(cfg), True
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise TriforceError(f"checkpoint {checkpoint}: no model.safetensors there (expected a checkpoint dir or file)")
    return path, False


def load_state(path: Path, cfg: ModelConfig, device: str = "cpu") -> dict:
    """Read every expected tensor from a safetensors file, strictly. Returns name -> torch tensor (stored dtype)."""
    from safetensors import SafetensorError, safe_open

    expected = expected_tensors(cfg)
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            names = set(f.keys())
            _check_names(path, names, expected)
            state, bad = {}, []
            for name, (shape, dtype) in expected.items():
                sl = f.get_slice(name)
                got_shape, got_dtype = tuple(sl.get_shape()), _dtype_name(sl.get_dtype())
                if got_shape != shape or got_dtype != dtype:
                    bad.append(f"{name}: {got_dtype}{list(got_shape)} (expected {dtype}{list(shape)})")
                    continue
                state[name] = f.get_tensor(name)
    except SafetensorError as err:
        raise TriforceError(f"checkpoint {path} is not a readable safetensors file ({err}): truncated or corrupt?") from None
    except OSError as err:
        raise TriforceError(f"checkpoint {path} could not be read ({err})") from None
    if bad:
        raise TriforceError(f"checkpoint {path}: {len(bad)} tensor(s) of the wrong shape or dtype for {cfg.name}: " + "; ".join(bad[:8]) + (" ..." if len(bad) > 8 else ""))
    return state


def placeholder_state(cfg: ModelConfig, device: str = "cuda") -> dict:
    """Uninitialized tensors of every expected name, shape and dtype, all views of one buffer (the size of the
    largest): enough to build the engine and compile its kernels before the checkpoint is read. Never inference."""
    import math

    import torch

    spec = {name: (shape, getattr(torch, dtype)) for name, (shape, dtype) in expected_tensors(cfg).items()}
    nbytes = lambda shape, dtype: math.prod(shape) * torch.empty(0, dtype=dtype).element_size()  # noqa: E731
    buf = torch.empty(max(nbytes(*sd) for sd in spec.values()), dtype=torch.uint8, device=device)
    return {name: buf[:nbytes(shape, dtype)].view(dtype).view(shape) for name, (shape, dtype) in spec.items()}


def _check_names(path: Path, names: set, expected: dict) -> None:
    missing = sorted(set(expected) - names)
    unexpected = sorted(names - set(expected) - IGNORED)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''})")
        raise TriforceError(f"checkpoint {path} does not match the config: " + "; ".join(parts))


def _dtype_name(st_dtype: str) -> str:
    return {"F32": F32, "BF16": BF16, "F16": "float16", "F64": "float64"}.get(st_dtype, st_dtype.lower())


# ── synthetic checkpoints ───────────────────────────────────────────────────────────────────────────────────────
def synthetic_dir() -> Path:
    return Path(os.environ.get("TRIFORCE_CACHE", Path.home() / ".cache" / "triforce")) / "synthetic"


def write_synthetic(cfg: ModelConfig, seed: int = 0) -> Path:
    """A deterministic random-weight checkpoint for `cfg`, written once as model.safetensors (atomically), under a
    name that carries the digest of its tensor shapes (a changed config never reads a stale file)."""
    shapes = repr(sorted(expected_tensors(cfg).items())).encode()
    path = synthetic_dir() / f"{cfg.name}-seed{seed}-{hashlib.sha256(shapes).hexdigest()[:12]}" / "model.safetensors"
    if path.is_file():
        return path
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    # On a GPU machine the generator runs there (a 3.5B-parameter model in seconds); the file records where.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=device).manual_seed(seed)
    tensors = {name: _synthetic_tensor(name, shape, dtype, gen) for name, (shape, dtype) in expected_tensors(cfg).items()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"triforce": "synthetic", "config": cfg.name, "seed": str(seed), "generator": device})
    with open(tmp, "rb+") as f:   # on disk before it is named: a load right after reads a file, not a write-back
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def _synthetic_tensor(name: str, shape: tuple, dtype: str, gen):
    """Random weights with init-like scales, so activations stay O(1) through every tower (no outliers: say so)."""
    import torch

    randn = torch.randn(shape, generator=gen, device=gen.device)
    if name.endswith(("input_layernorm.weight", "post_attention_layernorm.weight", f"{LANG}.norm.weight")):
        t = randn * 0.1                                   # Gemma RMSNorm scales by (1 + w)
    elif "layer_norm" in name or "post_layernorm" in name:
        t = randn * 0.05 + (1.0 if name.endswith("weight") else 0.0)
    elif name.endswith(".bias") or name.endswith("position_embedding.weight"):
        t = randn * 0.02
    else:                                                 # projections and embeddings: variance-preserving
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        t = randn * fan_in ** -0.5
    return t.to(getattr(torch, dtype)).cpu().contiguous()


def config_for(name_or_cfg) -> ModelConfig:
    return name_or_cfg if isinstance(name_or_cfg, ModelConfig) else load_config(name_or_cfg)
